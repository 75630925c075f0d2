//! What the layer answers when a session stays locked too long, and the
//! layer's configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use cloakroom_http::{HttpConfig, Reply};

/// Builds the response for a request whose session lock was not acquired in
/// time; gets how long the request waited.
pub type LockTimeoutResponder = Arc<dyn Fn(Duration) -> Response + Send + Sync>;

/// The default answer to a lock timeout: `503 Service Unavailable` with
/// `Retry-After: 1`, because the holder is most likely a slow request of the
/// same visitor that will be done soon.
pub fn default_lock_timeout_response(waited: Duration) -> Response {
    Reply::lock_timeout(waited).into_http::<Body>()
}

/// Everything the layer needs besides the manager.
#[derive(Clone)]
pub(crate) struct LayerConfig {
    pub(crate) http: HttpConfig,
    pub(crate) on_lock_timeout: LockTimeoutResponder,
}

impl Default for LayerConfig {
    fn default() -> Self {
        LayerConfig {
            http: HttpConfig::default(),
            on_lock_timeout: Arc::new(default_lock_timeout_response),
        }
    }
}

impl fmt::Debug for LayerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerConfig")
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}
