//! Reading the offered session id from a request and writing the id (or its
//! removal) into a response, by cookie or by header.

use std::time::Duration;

use cloakroom_core::SessionId;
use cookie::Cookie;
use http::{header, HeaderMap, HeaderValue};

use crate::config::{CookieConfig, CookieLifetime, IdCarrier, LayerConfig};

/// What the client offered as its session id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Offered {
    /// No id at all.
    Nothing,
    /// Something under the id's name that is not a well-formed id. It never
    /// reaches the store: the request gets a fresh session if it uses one.
    Malformed,
    /// A well-formed id, which may or may not name a live session.
    Id(SessionId),
}

impl Offered {
    pub(crate) fn id(&self) -> Option<&SessionId> {
        match self {
            Offered::Id(id) => Some(id),
            _ => None,
        }
    }

    pub(crate) fn is_something(&self) -> bool {
        !matches!(self, Offered::Nothing)
    }
}

/// The id the request offers.
///
/// With several cookies of the session's name (a parent domain's cookie
/// beside the host's, or a tossed one), the first well-formed one wins and
/// only that one is ever looked up: one lock per request, never several.
pub(crate) fn offered_id(headers: &HeaderMap, config: &LayerConfig) -> Offered {
    let mut offered = Offered::Nothing;
    match &config.carrier {
        IdCarrier::Cookie => {
            for value in headers.get_all(header::COOKIE) {
                let Ok(text) = value.to_str() else {
                    continue;
                };
                for cookie in Cookie::split_parse(text).flatten() {
                    if cookie.name() != config.cookie.name {
                        continue;
                    }
                    match SessionId::parse(cookie.value()) {
                        Ok(id) => return Offered::Id(id),
                        Err(_) => offered = Offered::Malformed,
                    }
                }
            }
        }
        IdCarrier::Header(name) => {
            if let Some(value) = headers.get(name) {
                offered = match value.to_str().ok().map(SessionId::parse) {
                    Some(Ok(id)) => Offered::Id(id),
                    _ => Offered::Malformed,
                };
            }
        }
    }
    offered
}

/// Tell the client its session id; `remaining` is how long the session
/// lives if unused (the cookie's Max-Age in [`CookieLifetime::Persistent`]).
pub(crate) fn write_id(headers: &mut HeaderMap, config: &LayerConfig, id: &SessionId, remaining: Duration) {
    match &config.carrier {
        IdCarrier::Cookie => {
            let mut cookie = base_cookie(&config.cookie, id.as_str().to_owned());
            if config.cookie.lifetime == CookieLifetime::Persistent {
                cookie.set_max_age(cookie::time::Duration::seconds(
                    i64::try_from(remaining.as_secs()).unwrap_or(i64::MAX),
                ));
            }
            append_set_cookie(headers, &cookie);
        }
        IdCarrier::Header(name) => {
            // An id is 43 base64url characters, always a valid header value.
            if let Ok(value) = HeaderValue::from_str(id.as_str()) {
                headers.insert(name.clone(), value);
            }
        }
    }
}

/// Tell the client to forget its session id (logout, or an id that names no
/// session). Only cookies can be taken back; a header client just gets none.
pub(crate) fn clear_id(headers: &mut HeaderMap, config: &LayerConfig) {
    if config.carrier == IdCarrier::Cookie {
        let mut cookie = base_cookie(&config.cookie, String::new());
        // Max-Age=0 plus an Expires in the past, with the same Path and
        // Domain, or the browser would keep the original cookie.
        cookie.make_removal();
        append_set_cookie(headers, &cookie);
    }
}

fn base_cookie(config: &CookieConfig, value: String) -> Cookie<'static> {
    let mut cookie = Cookie::build((config.name.clone(), value))
        .path(config.path.clone())
        .secure(config.secure)
        .http_only(config.http_only)
        .same_site(config.same_site)
        .build();
    if let Some(domain) = &config.domain {
        cookie.set_domain(domain.clone());
    }
    cookie
}

fn append_set_cookie(headers: &mut HeaderMap, cookie: &Cookie<'_>) {
    match HeaderValue::from_str(&cookie.to_string()) {
        Ok(value) => {
            headers.append(header::SET_COOKIE, value);
        }
        // Only a cookie name, path or domain configured with control
        // characters gets here: a programming error, not an input error.
        Err(_) => tracing::error!(name = %cookie.name(), "session cookie is not a valid header value"),
    }
}
