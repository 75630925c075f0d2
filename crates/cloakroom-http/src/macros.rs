//! The handler-facing API every integration offers, written once.
//!
//! An integration cannot implement its framework's extractor traits on this
//! crate's types (the orphan rule), so it declares its own `Session` and
//! `SessionReader` (each a struct with a field `inner: Arc<RequestSession>`)
//! and its own error type, and these macros fill in the methods, the same
//! names, signatures and documentation in every integration.

/// The methods of an integration's session handle (`Session`), in an `impl`
/// block of a struct with a field `inner: Arc<`[`RequestSession`](crate::RequestSession)`>`.
///
/// `error` is the integration's error type (`From<cloakroom_core::Error>`),
/// `reader` its read-only handle type (a struct with the same `inner` field).
#[macro_export]
macro_rules! session_methods {
    (error = $err:ty, reader = $reader:ident) => {
        /// The value under `key` as `T`.
        pub async fn get<T: $crate::__private::DeserializeOwned>(
            &self,
            key: &str,
        ) -> ::core::result::Result<::core::option::Option<T>, $err> {
            ::core::result::Result::Ok(self.inner.get(key).await?)
        }

        /// Store `value` under `key`; saved when the response is ready.
        pub async fn insert<T: $crate::__private::Serialize + ?Sized>(
            &self,
            key: &str,
            value: &T,
        ) -> ::core::result::Result<(), $err> {
            ::core::result::Result::Ok(self.inner.insert(key, value).await?)
        }

        /// Remove `key`; returns whether it was present.
        pub async fn remove(&self, key: &str) -> ::core::result::Result<bool, $err> {
            ::core::result::Result::Ok(self.inner.remove(key).await?)
        }

        /// Remove every key.
        pub async fn clear(&self) -> ::core::result::Result<(), $err> {
            ::core::result::Result::Ok(self.inner.clear().await?)
        }

        /// The session's id (a fresh one if the request had none, an invalid
        /// one or an unknown one). It is a bearer credential: show or log a
        /// prefix at most.
        pub async fn id(&self) -> ::core::result::Result<$crate::__private::SessionId, $err> {
            ::core::result::Result::Ok(self.inner.id().await?)
        }

        /// Whether the session is not stored yet.
        pub async fn is_new(&self) -> ::core::result::Result<bool, $err> {
            ::core::result::Result::Ok(self.inner.is_new().await?)
        }

        /// Give the session a new id, keeping its data. Call it on login so
        /// an id planted before login (session fixation) is worthless after;
        /// the response carries the new id and the old one stops working.
        pub async fn cycle_id(&self) -> ::core::result::Result<(), $err> {
            ::core::result::Result::Ok(self.inner.cycle_id().await?)
        }

        /// Delete the session now (logout) and tell the client to forget its
        /// id. Returns whether a stored session was deleted. Using the
        /// session again in the same request starts a fresh one (for a
        /// "logged out" flash).
        pub async fn delete(&self) -> ::core::result::Result<bool, $err> {
            ::core::result::Result::Ok(self.inner.delete().await?)
        }

        /// A reader over the same request's session that never locks.
        pub fn reader(&self) -> $reader {
            $reader {
                inner: ::std::sync::Arc::clone(&self.inner),
            }
        }
    };
}

/// The methods of an integration's read-only handle (`SessionReader`), in an
/// `impl` block of a struct with a field `inner: Arc<`[`RequestSession`](crate::RequestSession)`>`.
#[macro_export]
macro_rules! reader_methods {
    (error = $err:ty) => {
        /// The value under `key` as `T`; `None` also when there is no session.
        pub async fn get<T: $crate::__private::DeserializeOwned>(
            &self,
            key: &str,
        ) -> ::core::result::Result<::core::option::Option<T>, $err> {
            ::core::result::Result::Ok(self.inner.read(key).await?)
        }

        /// The id of the live session, if there is one.
        pub async fn id(
            &self,
        ) -> ::core::result::Result<::core::option::Option<$crate::__private::SessionId>, $err> {
            ::core::result::Result::Ok(self.inner.read_id().await?)
        }

        /// Whether the request has a live session.
        pub async fn exists(&self) -> ::core::result::Result<bool, $err> {
            ::core::result::Result::Ok(self.inner.read_id().await?.is_some())
        }
    };
}

/// The cookie setters of an integration's middleware builder, in an `impl`
/// block of a type with a method
/// `fn edit_http(self, f: impl FnOnce(&mut `[`HttpConfig`](crate::HttpConfig)`)) -> Self`,
/// in a crate that re-exports [`CookieLifetime`](crate::CookieLifetime) at
/// its root (the setters' documentation links to it).
#[macro_export]
macro_rules! cookie_setters {
    () => {
        /// Replace every cookie attribute at once.
        pub fn cookie(self, cookie: $crate::CookieConfig) -> Self {
            self.edit_http(|c| c.cookie = cookie)
        }

        /// The cookie's name (default `id`).
        pub fn cookie_name(self, name: impl ::core::convert::Into<::std::string::String>) -> Self {
            let name = name.into();
            self.edit_http(|c| c.cookie.name = name)
        }

        /// The cookie's `Path` (default `/`).
        pub fn cookie_path(self, path: impl ::core::convert::Into<::std::string::String>) -> Self {
            let path = path.into();
            self.edit_http(|c| c.cookie.path = path)
        }

        /// The cookie's `Domain` (default none: this host only).
        pub fn cookie_domain(self, domain: impl ::core::convert::Into<::std::string::String>) -> Self {
            let domain = domain.into();
            self.edit_http(|c| c.cookie.domain = ::core::option::Option::Some(domain))
        }

        /// The cookie's `Secure` flag (default on). Turn it off only for plain
        /// HTTP on a host other than `localhost`.
        pub fn secure(self, on: bool) -> Self {
            self.edit_http(|c| c.cookie.secure = on)
        }

        /// The cookie's `HttpOnly` flag (default on).
        pub fn http_only(self, on: bool) -> Self {
            self.edit_http(|c| c.cookie.http_only = on)
        }

        /// The cookie's `SameSite` (default `Lax`).
        pub fn same_site(self, same_site: $crate::SameSite) -> Self {
            self.edit_http(|c| c.cookie.same_site = same_site)
        }

        /// Persistent (default) or browser-session cookie; see
        /// [`CookieLifetime`](crate::CookieLifetime).
        pub fn cookie_lifetime(self, lifetime: $crate::CookieLifetime) -> Self {
            self.edit_http(|c| c.cookie.lifetime = lifetime)
        }

        /// Read and write the id with exactly this configuration (carrier and
        /// cookie attributes).
        pub fn http_config(self, config: $crate::HttpConfig) -> Self {
            self.edit_http(|c| *c = config)
        }
    };
}
