//! [`ExampleOptions`]: what a URL's query or the builder can set.

use cloakroom_core::{Error, Result, StoreUrl, DEFAULT_MAX_RECORD_BYTES};
use serde::Deserialize;

/// Options of a [`LeaseMapStore`](crate::LeaseMapStore).
///
/// Read from a URL with [`from_url`](Self::from_url) (every query key is a
/// field; an unknown key is refused) or built with [`new`](Self::new) and
/// the setters. Both ways are checked by the same rules.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExampleOptions {
    /// The largest encoded record accepted (URL key `max_record_bytes`).
    pub max_record_bytes: usize,
}

impl Default for ExampleOptions {
    fn default() -> Self {
        ExampleOptions {
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

impl ExampleOptions {
    /// The defaults (the table in the crate docs).
    pub fn new() -> Self {
        Self::default()
    }

    /// The largest encoded record accepted; a larger one is `TooLarge`.
    pub fn max_record_bytes(mut self, limit: usize) -> Self {
        self.max_record_bytes = limit;
        self
    }

    /// The options of an `example:` URL, checked.
    pub fn from_url(url: &StoreUrl) -> Result<Self> {
        if url.scheme() != "example" || url.has_authority() || !url.path().is_empty() {
            return Err(Error::Config(
                "an example store URL is `example:`, optionally with a query".into(),
            ));
        }
        let options: ExampleOptions = url.options()?;
        options.validate()?;
        Ok(options)
    }

    /// The one check of every value, whether it came from a URL or a setter.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_record_bytes == 0 {
            return Err(Error::Config(
                "example store: max_record_bytes must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LeaseMapStore;

    fn from(url: &str) -> Result<ExampleOptions> {
        ExampleOptions::from_url(&StoreUrl::parse(url)?)
    }

    #[test]
    fn urls_set_options_and_refuse_what_they_do_not_know() {
        assert_eq!(from("example:").unwrap(), ExampleOptions::new());
        assert_eq!(from("example:?max_record_bytes=10").unwrap().max_record_bytes, 10);
        for bad in ["example://host", "example:path", "example:?colour=red", "memory:"] {
            assert!(matches!(from(bad), Err(Error::Config(_))), "{bad}");
        }
    }

    #[test]
    fn a_zero_limit_is_the_same_error_from_a_url_or_the_builder() {
        let by_url = from("example:?max_record_bytes=0").unwrap_err().to_string();
        let by_builder = LeaseMapStore::new(ExampleOptions::new().max_record_bytes(0))
            .unwrap_err()
            .to_string();
        assert_eq!(by_url, by_builder);
    }
}
