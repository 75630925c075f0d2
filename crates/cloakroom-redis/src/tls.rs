//! The redis-rs clients of a store, over TLS for `rediss://` nodes (feature
//! `tls`): rustls with the ring provider, trusting the store's `tls_ca` when
//! it has one and the built-in webpki (Mozilla) roots otherwise.
//!
//! The CA file is read here, when a connection is first made, so a store
//! can be built before the file exists; one that cannot be read, or holds
//! no certificate, is [`Error::Config`](cloakroom_core::Error::Config)
//! naming it. Without the feature a `rediss://` node never gets this far
//! (the options refuse it as unsupported).

use std::path::Path;

use cloakroom_core::Result;
use redis::cluster::ClusterClientBuilder;

use crate::error::map_redis;
use crate::options::RedisOptions;

/// A client for one node (the single node, or a Cluster node a waiter
/// blocks on), with the store's TLS settings when the URL is `rediss://`.
pub(crate) fn client(url: &str, tls_ca: Option<&Path>) -> Result<redis::Client> {
    #[cfg(feature = "tls")]
    if url.get(..9).is_some_and(|s| s.eq_ignore_ascii_case("rediss://")) {
        enabled::ensure_crypto_provider();
        if let Some(path) = tls_ca {
            let certs = enabled::certificates(path)?;
            return redis::Client::build_with_tls(url, certs).map_err(map_redis);
        }
    }
    #[cfg(not(feature = "tls"))]
    let _ = tls_ca;
    redis::Client::open(url).map_err(map_redis)
}

/// The store's TLS settings on a Cluster client builder (nothing for
/// `redis://` seeds; redis-rs takes TLS itself from `rediss://` seeds).
pub(crate) fn cluster(builder: ClusterClientBuilder, options: &RedisOptions) -> Result<ClusterClientBuilder> {
    #[cfg(feature = "tls")]
    if options.is_tls() {
        enabled::ensure_crypto_provider();
        if let Some(path) = options.tls_ca_path() {
            return Ok(builder.certs(enabled::certificates(path)?));
        }
    }
    #[cfg(not(feature = "tls"))]
    let _ = options;
    Ok(builder)
}

#[cfg(feature = "tls")]
mod enabled {
    use std::path::Path;

    use cloakroom_core::{Error, Result};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    /// redis-rs builds its rustls configuration with the process-wide
    /// default crypto provider, which rustls picks by itself only when
    /// exactly one provider is compiled in. Install ring's if the process
    /// has none yet (an application that installed its own keeps it), so
    /// that a build where some other crate also turns on aws-lc-rs does not
    /// panic on the first TLS connection.
    pub(super) fn ensure_crypto_provider() {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Fails only if another thread installed one meanwhile: either
            // way there is one now.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    }

    /// The CA certificates in the PEM file at `path`, for redis-rs.
    pub(super) fn certificates(path: &Path) -> Result<redis::TlsCertificates> {
        let bad = |why: String| Error::Config(format!("redis tls_ca {}: {why}", path.display()));
        let pem = std::fs::read(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
        let mut found = 0usize;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            cert.map_err(|e| bad(format!("is not a PEM file of certificates: {e}")))?;
            found += 1;
        }
        if found == 0 {
            return Err(bad(
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()
            ));
        }
        Ok(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        })
    }
}
