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

        /// Delete the stored session now and go on with a fresh, empty one
        /// under a new id, in the same request ("log out, keep the cart"):
        /// the response clears the old id, or carries the new one if
        /// something was written to the fresh session. Returns whether a
        /// stored session was deleted.
        pub async fn flush(&self) -> ::core::result::Result<bool, $err> {
            ::core::result::Result::Ok(self.inner.flush().await?)
        }

        /// The session's own expiry; `None` means the manager's default.
        pub async fn expiry(
            &self,
        ) -> ::core::result::Result<::core::option::Option<$crate::__private::Expiry>, $err> {
            ::core::result::Result::Ok(self.inner.expiry().await?)
        }

        /// Give this session an expiry of its own, stored with it and kept on
        /// every later request: `Some(Expiry::OnInactivity(30 days))` for
        /// "remember me", `Some(Expiry::OnBrowserClose)` for a cookie the
        /// browser forgets when it closes, `None` for the manager's default.
        /// The cookie follows it: `Max-Age` is the stored expiry minus now
        /// for `OnInactivity` and `AtInstant` (whatever the cookie lifetime
        /// setting), and there is no `Max-Age` for `OnBrowserClose`. The
        /// manager's absolute timeout still caps every session.
        pub async fn set_expiry(
            &self,
            expiry: ::core::option::Option<$crate::__private::Expiry>,
        ) -> ::core::result::Result<(), $err> {
            ::core::result::Result::Ok(self.inner.set_expiry(expiry).await?)
        }

        /// Who the session belongs to (see `set_principal`).
        pub async fn principal(
            &self,
        ) -> ::core::result::Result<::core::option::Option<$crate::__private::Principal>, $err> {
            ::core::result::Result::Ok(self.inner.principal().await?)
        }

        /// Tag the session with its user on login (`None` on logout), so the
        /// manager can list a user's sessions (`Manager::sessions_of`) and
        /// end them all (`Manager::revoke_all`). Stored at commit; call
        /// `cycle_id` with it.
        pub async fn set_principal(
            &self,
            principal: ::core::option::Option<$crate::__private::Principal>,
        ) -> ::core::result::Result<(), $err> {
            ::core::result::Result::Ok(self.inner.set_principal(principal).await?)
        }

        /// When the session was created (now, for a new one).
        pub async fn created(&self) -> ::core::result::Result<$crate::__private::Timestamp, $err> {
            ::core::result::Result::Ok(self.inner.created().await?)
        }

        /// When the session was last used before this request (now, for a
        /// new one); after `commit_now`, when that commit used it.
        pub async fn accessed(&self) -> ::core::result::Result<$crate::__private::Timestamp, $err> {
            ::core::result::Result::Ok(self.inner.accessed().await?)
        }

        /// When the session expires if it is committed now (its own expiry,
        /// or the manager's timeouts); after `commit_now`, the expiry that
        /// commit computed.
        pub async fn expires(&self) -> ::core::result::Result<$crate::__private::Timestamp, $err> {
            ::core::result::Result::Ok(self.inner.expires().await?)
        }

        /// Commit the session now and release its lock, before a long
        /// operation (PHP's `session_write_close`): the visitor's other
        /// requests proceed while this handler keeps running.
        ///
        /// Afterwards `get` (and the other reads) still see the committed
        /// data, and every change — `insert`, `remove`, `clear`,
        /// `cycle_id`, `set_expiry`, `set_principal`, `delete`, `flush` —
        /// fails with `Error::Released` (a `500` if the handler returns
        /// it), since it could no longer be saved. The end of the request
        /// commits nothing more, but still sends the id of a session this
        /// commit created. Calling it again, or after `rollback`, does
        /// nothing.
        ///
        /// A failed commit is returned as the end-of-request commit's
        /// would be (the lock is released all the same): `Error::Gone` if
        /// the session was deleted meanwhile (the response then clears the
        /// id), `Error::Conflict` under the optimistic policy (nothing was
        /// saved; `409` if returned).
        pub async fn commit_now(&self) -> ::core::result::Result<(), $err> {
            ::core::result::Result::Ok(self.inner.commit_now().await?)
        }

        /// Discard this request's changes to the session and release its
        /// lock now, rather than at the end of the request. Afterwards reads
        /// see the session as stored, changes fail with `Error::Released`,
        /// and the end of the request writes nothing. A `delete` or `flush`
        /// done before is not undone (it reached the store at once).
        /// Calling it again, or after `commit_now`, does nothing.
        pub async fn rollback(&self) -> ::core::result::Result<(), $err> {
            ::core::result::Result::Ok(self.inner.rollback().await?)
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
