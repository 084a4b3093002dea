//! A DNS stand-in for the screening's unit tests.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::{Query, ScreenDns};

/// Answers after a fixed pause; queries it does not know have no records.
/// Queries in `mute` (or every query, with `mute_all`) are never answered.
pub struct FakeDns {
    pub pause: Duration,
    pub answers: HashMap<Query, Vec<String>>,
    pub mute: HashSet<Query>,
    pub mute_all: bool,
}

impl ScreenDns for FakeDns {
    fn resolve<'a>(
        &'a self,
        query: &'a Query,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<String>, String>> + Send + 'a>> {
        Box::pin(async move {
            if self.mute_all || self.mute.contains(query) {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(self.pause).await;
            Ok(self.answers.get(query).cloned().unwrap_or_default())
        })
    }
}

/// A FakeDns answering `answers` after `pause_ms`.
pub fn dns(pause_ms: u64, answers: &[(Query, Vec<String>)]) -> FakeDns {
    FakeDns {
        pause: Duration::from_millis(pause_ms),
        answers: answers.iter().cloned().collect(),
        mute: HashSet::new(),
        mute_all: false,
    }
}
