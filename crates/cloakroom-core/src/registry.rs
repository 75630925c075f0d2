//! Which backend a store URL's scheme names.
//!
//! Every backend crate exports one [`Opener`]: its schemes and a function
//! from a parsed [`StoreUrl`] to a store. A [`Registry`] is a list of them.
//! The `cloakroom` facade builds one with every backend compiled in; a
//! third-party backend crate adds its own opener to that registry, so
//! `open()` and the `cloakroom` CLI understand its URLs too.
//!
//! Opening is synchronous and does no I/O: stores connect on first use, and
//! [`SessionStore::migrate`] (or any operation) is how a caller finds out
//! whether the server answers.

use std::sync::Arc;

use crate::store_url::StoreUrl;
use crate::{Error, MemoryStore, Result, SessionStore};

/// Builds a store from its URL; see [`Opener`].
pub type OpenFn = fn(&StoreUrl) -> Result<Arc<dyn SessionStore>>;

/// How one backend is opened from a URL.
#[derive(Clone, Copy, Debug)]
pub struct Opener {
    /// The URL schemes this backend answers to, lowercase (`"sqlite"`).
    pub schemes: &'static [&'static str],
    /// Build a store from a URL whose scheme is one of [`schemes`](Self::schemes).
    /// It must not connect: that happens on first use.
    pub open: OpenFn,
}

/// The memory store's opener: `memory:` (one process only).
pub const MEMORY: Opener = Opener {
    schemes: &["memory"],
    open: open_memory,
};

fn open_memory(url: &StoreUrl) -> Result<Arc<dyn SessionStore>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct MemoryOptions {
        max_record_bytes: Option<usize>,
    }
    if url.has_authority() || !url.path().is_empty() {
        return Err(Error::Config("the memory store URL is just memory:".into()));
    }
    let options: MemoryOptions = url.options()?;
    Ok(Arc::new(match options.max_record_bytes {
        Some(limit) => MemoryStore::with_max_record_bytes(limit),
        None => MemoryStore::new(),
    }))
}

/// Backends by URL scheme.
///
/// ```
/// use cloakroom_core::registry::{Registry, MEMORY};
///
/// let registry = Registry::new().with(MEMORY);
/// let store = registry.open("memory:")?;
/// assert!(!store.capabilities().multi_process);
/// # Ok::<(), cloakroom_core::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Registry {
    openers: Vec<Opener>,
    /// Schemes known but not compiled in, with the Cargo feature that adds them.
    missing: Vec<(&'static str, &'static str)>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Add a backend. Its schemes take precedence over any registered
    /// before, so an application can replace a built-in backend.
    pub fn register(&mut self, opener: Opener) -> &mut Self {
        self.missing
            .retain(|(scheme, _)| !opener.schemes.contains(scheme));
        self.openers.insert(0, opener);
        self
    }

    /// [`register`](Self::register), by value.
    pub fn with(mut self, opener: Opener) -> Self {
        self.register(opener);
        self
    }

    /// Record schemes whose backend is not compiled in, so that opening one
    /// says which Cargo feature adds it instead of "unknown scheme".
    pub fn register_missing(&mut self, schemes: &'static [&'static str], feature: &'static str) -> &mut Self {
        for scheme in schemes {
            if self.opener(scheme).is_none() {
                self.missing.push((scheme, feature));
            }
        }
        self
    }

    /// Every scheme that opens a store, in registration order.
    pub fn schemes(&self) -> Vec<&'static str> {
        let mut schemes: Vec<&'static str> = Vec::new();
        for opener in self.openers.iter().rev() {
            for scheme in opener.schemes {
                if !schemes.contains(scheme) {
                    schemes.push(scheme);
                }
            }
        }
        schemes
    }

    fn opener(&self, scheme: &str) -> Option<&Opener> {
        self.openers.iter().find(|o| o.schemes.contains(&scheme))
    }

    /// Build the store `url` names, without connecting (see the module docs).
    ///
    /// An unknown scheme or a malformed URL is [`Error::Config`]; a scheme
    /// whose backend is not compiled in is [`Error::Unsupported`] naming
    /// the feature. Credentials in the URL never appear in an error.
    pub fn open(&self, url: &str) -> Result<Arc<dyn SessionStore>> {
        self.open_url(&StoreUrl::parse(url)?)
    }

    /// [`open`](Self::open) for a parsed URL.
    pub fn open_url(&self, url: &StoreUrl) -> Result<Arc<dyn SessionStore>> {
        if let Some(opener) = self.opener(url.scheme()) {
            return (opener.open)(url);
        }
        if let Some((_, feature)) = self.missing.iter().find(|(s, _)| *s == url.scheme()) {
            return Err(Error::Unsupported(format!(
                "the {feature} backend is not compiled in; enable the `{feature}` feature of the cloakroom crate"
            )));
        }
        Err(Error::Config(format!(
            "unknown store scheme {:?}; expected one of: {}",
            url.scheme(),
            self.schemes().join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuse(_: &StoreUrl) -> Result<Arc<dyn SessionStore>> {
        Err(Error::Config("the replacement was called".into()))
    }

    #[test]
    fn later_registrations_take_precedence_and_missing_names_the_feature() {
        let mut registry = Registry::new().with(MEMORY);
        registry.register_missing(&["redis", "memory"], "redis");
        assert!(registry.open("memory:").is_ok());
        match registry.open("redis://h") {
            Err(Error::Unsupported(m)) => assert!(m.contains("`redis` feature"), "{m}"),
            other => panic!("{other:?}"),
        }
        match registry.open("ftp://h") {
            Err(Error::Config(m)) => assert!(m.contains("memory"), "{m}"),
            other => panic!("{other:?}"),
        }
        registry.register(Opener {
            schemes: &["memory"],
            open: refuse,
        });
        assert!(matches!(registry.open("memory:"), Err(Error::Config(m)) if m.contains("replacement")));
        assert_eq!(registry.schemes(), ["memory"]);
    }

    #[test]
    fn memory_urls_take_only_a_record_limit() {
        let registry = Registry::new().with(MEMORY);
        let store = registry.open("memory:?max_record_bytes=10").unwrap();
        assert_eq!(store.capabilities().max_record_bytes, 10);
        for bad in ["memory://h", "memory:x", "memory:?colour=red"] {
            assert!(matches!(registry.open(bad), Err(Error::Config(_))), "{bad}");
        }
    }
}
