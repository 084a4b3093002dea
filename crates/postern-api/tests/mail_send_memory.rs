//! `/v3/mail/send` decodes each attachment once and holds one built message
//! at a time (README, "Security defaults": memory). Measured with a
//! counting global allocator around one request through the real router
//! and intake, so this binary holds this one test only: nothing else
//! allocates while it measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use base64::Engine;
use postern_accounts::Authenticator;
use postern_api::{ApiState, MailSupport};
use postern_core::config::AuthConfig;
use postern_queue::{BodyBudget, Intake};
use postern_store::{EmbeddedStore, QueueStore};
use tower_service::Service;

/// The attachment's decoded size: a multiple of 3, so its base64 has no
/// padding and a decoder's buffer (sized from the encoded length, 3 bytes
/// per 4) is exactly this long; and far from a power of two, so the
/// growing buffers of the message builder (whose capacities double) never
/// have this size.
const ATTACHMENT: usize = 3 * 400_001;
/// Personalizations, each its own message carrying the attachment.
const MESSAGES: usize = 12;

/// Counts live bytes (the high-water mark while `PEAK` is reset) and the
/// allocations of exactly the decoded attachment's size, on every thread.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);
static DECODED_SIZED: AtomicUsize = AtomicUsize::new(0);

impl Counting {
    fn grew(size: usize) {
        let live = LIVE.fetch_add(size, Ordering::SeqCst) + size;
        PEAK.fetch_max(live, Ordering::SeqCst);
    }

    fn allocated(size: usize) {
        Self::grew(size);
        if COUNTING.load(Ordering::SeqCst) && size == ATTACHMENT {
            DECODED_SIZED.fetch_add(1, Ordering::SeqCst);
        }
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::allocated(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::allocated(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as the new block, the old one gone: a copy between
            // them is momentary.
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
            Self::allocated(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes that do not compress or repeat, so nothing can share them.
fn attachment() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..ATTACHMENT)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn mail_send_decodes_attachments_once_and_holds_one_message_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let authenticator = Authenticator::new(store.clone(), &AuthConfig::default())
        .await
        .unwrap();
    let key = authenticator
        .api_keys()
        .create(store.as_ref(), "admin", "test", vec![], None)
        .await
        .unwrap()
        .secret;
    let intake = Intake::new(store.clone(), "postern.test".into())
        .with_body_budget(BodyBudget::new(256 << 20, 256 << 20));
    let state = ApiState {
        store: store.clone(),
        authenticator,
        metrics: None,
        delivery_wakeup: None,
        webhooks: None,
        domains: None,
        senders: None,
        mail: Some(MailSupport {
            intake,
            max_message_size: 25 << 20,
        }),
        health: Vec::new(),
    };
    let mut router = postern_api::router(state, false);

    let personalizations: Vec<_> = (0..MESSAGES)
        .map(|i| serde_json::json!({"to": [{"email": format!("r{i}@example.net")}]}))
        .collect();
    let json = serde_json::to_vec(&serde_json::json!({
        "personalizations": personalizations,
        "from": {"email": "sender@example.org"},
        "subject": "attached",
        "content": [{"type": "text/plain", "value": "see the attachment"}],
        "attachments": [{
            "content": base64::engine::general_purpose::STANDARD.encode(attachment()),
            "filename": "data.bin",
            "type": "application/octet-stream",
        }],
    }))
    .unwrap();
    // Exactly as long as it is, so what the request body holds is known.
    let json = json.into_boxed_slice();
    let request_bytes = json.len();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut req = Request::builder()
        .method("POST")
        .uri("/v3/mail/send")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("content-length", request_bytes.to_string())
        .body(Body::from(bytes::Bytes::from(json)))
        .unwrap();
    req.extensions_mut().insert(ConnectInfo(peer));

    // Measured: the request, from the router to the response, counting
    // the request's body as held from the start (it is freed once read).
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let before = before - request_bytes;
    COUNTING.store(true, Ordering::SeqCst);
    let response = router.call(req).await.unwrap();
    COUNTING.store(false, Ordering::SeqCst);
    let held = PEAK.load(Ordering::SeqCst).saturating_sub(before);
    let decoded = DECODED_SIZED.load(Ordering::SeqCst);
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let queued = store.claim_due(i64::MAX / 4, 1000, 60_000).await.unwrap();
    assert_eq!(queued.len(), MESSAGES, "one message per personalization");
    let message = queued.iter().map(|j| j.body.len()).max().unwrap();
    let all_messages: usize = queued.iter().map(|j| j.body.len()).sum();
    assert!(message > ATTACHMENT, "each message carries the attachment");

    // One decoded copy of the attachment for the whole request, not one
    // per message (the decoder's buffer is exactly the attachment's size,
    // see ATTACHMENT; zero would mean this count no longer sees it).
    assert_eq!(decoded, 1, "buffers of the decoded attachment's size");
    // At most: the request twice (as received and read, or as read and
    // parsed: the parsed request holds the base64 text), the decoded
    // attachment, and one built message in a growing buffer (a doubling
    // buffer may be up to twice the message) or the previous one the
    // store is still dropping beside it: 2 R + S + 3 M. Holding every
    // built message (12 M) would be far above.
    let bound = 2 * request_bytes + ATTACHMENT + 3 * message;
    assert!(
        bound < all_messages,
        "the bound ({bound}) must be below holding every message ({all_messages})"
    );
    assert!(
        held < bound,
        "held {held} bytes at once (bound {bound}; request {request_bytes}, \
         attachment {ATTACHMENT}, message {message}, all messages {all_messages})"
    );
}
