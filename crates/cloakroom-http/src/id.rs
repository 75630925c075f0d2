//! Reading the offered session id from a request, and the headers that give
//! the client its id (or take it back), by cookie or by header.

use std::time::Duration;

use cloakroom_core::SessionId;
use cookie::Cookie;
use http::{header, HeaderMap, HeaderName, HeaderValue};

use crate::config::{CookieConfig, HttpConfig, IdCarrier};

/// What the client offered as its session id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Offered {
    /// No id at all.
    Nothing,
    /// Something under the id's name that is not a well-formed id. It never
    /// reaches the store: the request gets a fresh session if it uses one.
    Malformed,
    /// A well-formed id, which may or may not name a live session.
    Id(SessionId),
}

impl Offered {
    /// The well-formed id, if one was offered.
    pub fn id(&self) -> Option<&SessionId> {
        match self {
            Offered::Id(id) => Some(id),
            _ => None,
        }
    }

    /// Whether the client sent anything under the id's name.
    pub fn is_something(&self) -> bool {
        !matches!(self, Offered::Nothing)
    }

    /// The id a request offers, under `config`.
    ///
    /// With several cookies of the session's name (a parent domain's cookie
    /// beside the host's, or a tossed one), the first well-formed one wins
    /// and only that one is ever looked up: one lock per request, never
    /// several. Header values that are not text count as malformed.
    pub fn from_request(headers: &impl RequestHeaders, config: &HttpConfig) -> Offered {
        let mut offered = Offered::Nothing;
        match &config.carrier {
            IdCarrier::Cookie => {
                for value in headers.values(&header::COOKIE) {
                    let Ok(text) = std::str::from_utf8(value) else {
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
                if let Some(value) = headers.values(name).next() {
                    offered = match std::str::from_utf8(value).ok().map(SessionId::parse) {
                        Some(Ok(id)) => Offered::Id(id),
                        _ => Offered::Malformed,
                    };
                }
            }
        }
        offered
    }
}

/// A request's headers, as each web framework keeps them: all the values of
/// one header, as bytes, in order.
pub trait RequestHeaders {
    /// Every value of the header `name`.
    fn values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]>;
}

impl RequestHeaders for HeaderMap {
    fn values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

/// One header for the response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderWrite {
    /// The header's name.
    pub name: HeaderName,
    /// Its value.
    pub value: HeaderValue,
    /// Add it beside existing ones of the name (`Set-Cookie`), rather than
    /// replace them.
    pub append: bool,
}

impl HeaderWrite {
    /// Apply to an `http` header map.
    pub fn apply(self, headers: &mut HeaderMap) {
        if self.append {
            headers.append(self.name, self.value);
        } else {
            headers.insert(self.name, self.value);
        }
    }
}

/// Tell the client its session id. `max_age` is how long the stored session
/// lives if unused, for a persistent cookie; `None` makes a cookie the
/// browser drops when it closes. A header carrier ignores it.
pub(crate) fn write_id(
    config: &HttpConfig,
    id: &SessionId,
    max_age: Option<Duration>,
) -> Option<HeaderWrite> {
    match &config.carrier {
        IdCarrier::Cookie => {
            let mut cookie = base_cookie(&config.cookie, id.as_str().to_owned());
            if let Some(remaining) = max_age {
                // To the nearest second: the millisecond between computing
                // the expiry and this must not turn 86400 into 86399.
                let seconds = (remaining.as_millis() + 500) / 1000;
                cookie.set_max_age(cookie::time::Duration::seconds(
                    i64::try_from(seconds).unwrap_or(i64::MAX),
                ));
            }
            set_cookie(&cookie)
        }
        // An id is 43 base64url characters, always a valid header value.
        IdCarrier::Header(name) => HeaderValue::from_str(id.as_str()).ok().map(|value| HeaderWrite {
            name: name.clone(),
            value,
            append: false,
        }),
    }
}

/// Tell the client to forget its session id (logout, or an id that names no
/// session). Only cookies can be taken back; a header client just gets none.
pub(crate) fn clear_id(config: &HttpConfig) -> Option<HeaderWrite> {
    if config.carrier != IdCarrier::Cookie {
        return None;
    }
    let mut cookie = base_cookie(&config.cookie, String::new());
    // Max-Age=0 plus an Expires in the past, with the same Path and
    // Domain, or the browser would keep the original cookie.
    cookie.make_removal();
    set_cookie(&cookie)
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

fn set_cookie(cookie: &Cookie<'_>) -> Option<HeaderWrite> {
    match HeaderValue::from_str(&cookie.to_string()) {
        Ok(value) => Some(HeaderWrite {
            name: header::SET_COOKIE,
            value,
            append: true,
        }),
        // Only a cookie name, path or domain configured with control
        // characters gets here: a programming error, not an input error.
        Err(_) => {
            tracing::error!(name = %cookie.name(), "session cookie is not a valid header value");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_first_well_formed_cookie_of_the_name_wins() {
        let id = SessionId::generate();
        let config = HttpConfig::default();
        let h = headers(&[
            ("cookie", "other=1; id=../x"),
            ("cookie", &format!("id={id}; id=y")),
        ]);
        assert_eq!(Offered::from_request(&h, &config), Offered::Id(id));
        let h = headers(&[("cookie", "id=../x; other=2")]);
        assert_eq!(Offered::from_request(&h, &config), Offered::Malformed);
        assert_eq!(Offered::from_request(&headers(&[]), &config), Offered::Nothing);
    }

    #[test]
    fn a_header_carrier_ignores_cookies() {
        let id = SessionId::generate();
        let config = HttpConfig {
            carrier: IdCarrier::Header(HeaderName::from_static("x-session")),
            ..HttpConfig::default()
        };
        let h = headers(&[("cookie", &format!("id={id}"))]);
        assert_eq!(Offered::from_request(&h, &config), Offered::Nothing);
        let h = headers(&[("x-session", id.as_str())]);
        assert_eq!(Offered::from_request(&h, &config), Offered::Id(id.clone()));
        let h = headers(&[("x-session", "../../etc")]);
        assert_eq!(Offered::from_request(&h, &config), Offered::Malformed);
        let write = write_id(&config, &id, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(write.value, id.as_str());
        assert!(!write.append);
        assert_eq!(clear_id(&config), None, "a header cannot be taken back");
    }

    #[test]
    fn cookies_carry_the_secure_defaults_and_removal_matches_them() {
        let config = HttpConfig::default();
        let id = SessionId::generate();
        let line = write_id(&config, &id, Some(Duration::from_secs(90))).unwrap();
        assert_eq!(line.name, header::SET_COOKIE);
        let line = line.value.to_str().unwrap().to_owned();
        assert!(line.starts_with(&format!("id={id}")), "{line}");
        for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age=90"] {
            assert!(line.split("; ").any(|a| a == attr), "{attr} missing: {line}");
        }
        let gone = clear_id(&config).unwrap();
        let gone = gone.value.to_str().unwrap();
        assert!(gone.starts_with("id=;"), "{gone}");
        assert!(gone.contains("Max-Age=0") && gone.contains("Path=/"), "{gone}");
    }
}
