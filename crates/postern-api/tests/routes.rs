//! The OpenAPI document lists exactly the routes the router serves, so a
//! test that walks the document (tests/e2e/test_api_scopes.py checks every
//! route's scope that way) walks every route.
//!
//! The router cannot list its routes, so they are read from the source:
//! every `.route("PATH", get(..).post(..))` under `src/v3/`. The other way
//! round, every operation the document lists is asked of the real router:
//! it must exist (not 404 or 405) and want a key (401) unless the document
//! says it needs none.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use postern_accounts::Authenticator;
use postern_api::ApiState;
use postern_core::config::AuthConfig;
use postern_store::EmbeddedStore;
use tower_service::Service;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

type Operation = (String, String);

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text between the `(` at `open` and its matching `)`.
fn parenthesised(text: &str, open: usize) -> &str {
    let mut depth = 0;
    for (i, c) in text[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses after byte {open}");
}

/// (METHOD, path) of every `.route(..)` call in `text`.
fn routes_in(text: &str) -> Vec<Operation> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices(".route(") {
        let args = parenthesised(text, at + ".route".len());
        let path_start = args.find('"').expect("a route path literal") + 1;
        let path_len = args[path_start..].find('"').expect("a closed literal");
        let path = &args[path_start..path_start + path_len];
        let handlers = &args[path_start + path_len + 1..];
        let mut found = false;
        for method in METHODS {
            // `get(` at the start of the method router or after a `.`.
            for (i, _) in handlers.match_indices(&format!("{method}(")) {
                let before = handlers[..i].trim_end();
                if before.ends_with(',') || before.ends_with('.') {
                    out.push((method.to_uppercase(), path.to_owned()));
                    found = true;
                }
            }
        }
        assert!(found, "no method for route {path}: {args}");
    }
    out
}

fn served_by_router() -> BTreeSet<Operation> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/v3"), &mut files);
    let mut all = BTreeSet::new();
    for f in files {
        for op in routes_in(&std::fs::read_to_string(&f).unwrap()) {
            assert!(all.insert(op.clone()), "{op:?} registered twice");
        }
    }
    // `/healthz`, `/metrics` and the document itself, from lib.rs: there
    // the metrics listener's router repeats two of them, so no
    // uniqueness check.
    all.extend(routes_in(
        &std::fs::read_to_string(root.join("src/lib.rs")).unwrap(),
    ));
    all
}

/// (operation, whether it needs a key) for every operation in the document.
fn documented() -> Vec<(Operation, bool)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if METHODS.contains(&method.as_str()) {
                let open = op.get("security") == Some(&serde_json::json!([]));
                out.push(((method.to_uppercase(), path.clone()), !open));
            }
        }
    }
    out
}

#[test]
fn the_route_reader_sees_every_method() {
    let text = r#"
        Router::new()
            .route("/a", get(list).post(create))
            .route(
                "/a/{id}",
                get(read).put(replace).patch(rename).delete(revoke),
            )
            .route("/b", post(run))
    "#;
    let got: BTreeSet<_> = routes_in(text).into_iter().collect();
    let want: BTreeSet<_> = [
        ("GET", "/a"),
        ("POST", "/a"),
        ("GET", "/a/{id}"),
        ("PUT", "/a/{id}"),
        ("PATCH", "/a/{id}"),
        ("DELETE", "/a/{id}"),
        ("POST", "/b"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn the_document_lists_exactly_the_routes_the_router_registers() {
    let registered = served_by_router();
    let listed: BTreeSet<Operation> = documented().into_iter().map(|(op, _)| op).collect();
    assert!(registered.len() > 40, "{registered:?}");
    let undocumented: Vec<_> = registered.difference(&listed).collect();
    let unserved: Vec<_> = listed.difference(&registered).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "registered but not in openapi.json: {undocumented:?}; in openapi.json but not registered: {unserved:?}"
    );
}

#[tokio::test]
async fn the_router_serves_every_documented_operation() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let authenticator = Authenticator::new(store.clone(), &AuthConfig::default())
        .await
        .unwrap();
    let state = ApiState {
        store,
        authenticator,
        metrics: None,
        delivery_wakeup: None,
        webhooks: None,
        domains: None,
        senders: None,
        mail: None,
        health: Vec::new(),
    };
    let mut router = postern_api::router(state, true);
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    for ((method, path), needs_key) in documented() {
        let uri = path
            .replace("{id}", "1")
            .replace("{name}", "n")
            .replace("{email}", "a@example.net")
            .replace("{msg_id}", "m")
            .replace("{token}", "t");
        let mut req = Request::builder()
            .method(method.as_str())
            .uri(&uri)
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        let response = router.call(req).await.unwrap();
        let status = response.status();
        if needs_key {
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} without a key"
            );
        } else {
            // The handler ran: a made-up token is its own 404 (with an
            // explanation), not the router's empty one.
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            assert!(
                status != StatusCode::NOT_FOUND || !body.is_empty(),
                "{method} {path}: the router's 404"
            );
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        }
    }
}
