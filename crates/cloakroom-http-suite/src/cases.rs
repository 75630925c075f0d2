//! One function per promise of a web integration, each generic over the
//! [`Framework`] and taking the [`Backend`], so every integration runs the
//! same checks on every store ([`http_suite!`](crate::http_suite) calls them).
//! A case on a backend that is skipped returns at once.

use std::time::{Duration, Instant};

use cloakroom::{Policy, Principal, SessionId, Timestamp};

use crate::{
    attrs, browser, client, cookie_value, routes, set_cookie, set_cookie_named, set_cookies, App, Backend,
    CookieConfig, CookieLifetime, Framework, HttpConfig, IdCarrier, Probe, SameSite, Setup,
};

async fn start<F: Framework>(backend: Backend) -> Option<App> {
    App::start::<F>(backend, |b| b, Setup::default()).await
}

/// A new visitor's first `/inc`: the `Cookie` header to send next.
async fn new_visitor(app: &App, c: &reqwest::Client) -> String {
    let r = c.get(app.url(routes::INC)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let line = set_cookie(&r).expect("a new session sets a cookie");
    line.split(';').next().unwrap().to_owned()
}

async fn get(app: &App, c: &reqwest::Client, path: &str, cookie: &str) -> reqwest::Response {
    c.get(app.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

async fn text(r: reqwest::Response) -> String {
    r.text().await.unwrap()
}

/// One visitor, six tabs at once, slow and fast pages mixed, 50 requests
/// per tab: every hit counts, exactly 300, in one session.
pub async fn six_tabs<F: Framework>(backend: Backend) {
    const TABS: usize = 6;
    const PER_TAB: usize = 50;
    let Some(app) = start::<F>(backend).await else {
        return;
    };
    let browser = browser();
    let started = Instant::now();

    // The visitor's first page sets the cookie, as it does before a reader
    // opens stories in tabs; it is the first of tab 0's requests.
    let first = browser.get(app.url(routes::INC)).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(
        set_cookie(&first).is_some(),
        "the first hit must set the session cookie"
    );

    let mut tabs = Vec::new();
    for tab in 0..TABS {
        let browser = browser.clone();
        let base = app.url("");
        tabs.push(tokio::spawn(async move {
            let (mut requests, mut slowest) = (0usize, Duration::ZERO);
            for n in usize::from(tab == 0)..PER_TAB {
                // Every tenth request overall is the slow page.
                let path = if (tab * PER_TAB + n) % 10 == 5 {
                    routes::SLOW
                } else {
                    routes::INC
                };
                let t = Instant::now();
                let r = browser.get(format!("{base}{path}")).send().await.unwrap();
                assert_eq!(r.status(), 200, "tab {tab} request {n} {path}");
                slowest = slowest.max(t.elapsed());
                requests += 1;
            }
            (requests, slowest)
        }));
    }
    let mut total = 1;
    let mut slowest = Duration::ZERO;
    for tab in tabs {
        let (requests, tab_slowest) = tab.await.unwrap();
        total += requests;
        slowest = slowest.max(tab_slowest);
    }
    let hits = text(browser.get(app.url(routes::READ)).send().await.unwrap()).await;
    println!(
        "six tabs on {backend:?}: {total} requests in {:?} (slowest answer {slowest:?}) -> {hits} hits",
        started.elapsed()
    );
    assert_eq!(total, TABS * PER_TAB);
    assert_eq!(
        hits,
        (TABS * PER_TAB).to_string(),
        "a hit was lost or counted twice"
    );
    assert_eq!(app.rows().await, 1, "all tabs share one session");
}

/// The control of [`six_tabs`]: the same kind of load under the `Lossy`
/// policy (no lock) loses hits, so the suite can tell a lock from luck.
pub async fn without_the_lock_tabs_lose_hits<F: Framework>() {
    const TABS: usize = 3;
    const PER_TAB: usize = 10;
    let app = App::start::<F>(Backend::Memory, |b| b.policy(Policy::Lossy), Setup::default())
        .await
        .unwrap();
    let browser = browser();
    assert_eq!(
        browser.get(app.url(routes::INC)).send().await.unwrap().status(),
        200
    );
    let mut tabs = Vec::new();
    for tab in 0..TABS {
        let (browser, base) = (browser.clone(), app.url(""));
        tabs.push(tokio::spawn(async move {
            for n in usize::from(tab == 0)..PER_TAB {
                let path = if n % 3 == 0 { routes::SLOW } else { routes::INC };
                let r = browser.get(format!("{base}{path}")).send().await.unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for tab in tabs {
        tab.await.unwrap();
    }
    let hits: usize = text(browser.get(app.url(routes::READ)).send().await.unwrap())
        .await
        .parse()
        .unwrap();
    println!("without the lock: {hits} of {} hits counted", TABS * PER_TAB);
    assert!(
        hits < TABS * PER_TAB,
        "the unlocked control lost no hit: six_tabs could not tell"
    );
}

/// The commit happens before the response is sent: as soon as the client
/// has the answer, the store has the change.
pub async fn committed_before_the_response<F: Framework>(backend: Backend) {
    let Some(app) = start::<F>(backend).await else {
        return;
    };
    let c = client();
    let cookie = new_visitor(&app, &c).await;
    let id = SessionId::parse(&cookie_value(&cookie)).unwrap();
    for want in 2..=6u64 {
        let r = get(&app, &c, routes::INC, &cookie).await;
        assert_eq!(text(r).await, want.to_string());
        let stored = app.manager.open_read_only(&id).await.unwrap().expect("stored");
        assert_eq!(
            stored.get::<u64>("n").unwrap(),
            Some(want),
            "the answer came before the save"
        );
    }
}

/// Visitors without a cookie who only look leave nothing behind, and a
/// route that never touches the session costs no store call at all.
pub async fn lookers_leave_no_rows<F: Framework>(backend: Backend) {
    let Some(app) = start::<F>(backend).await else {
        return;
    };
    let c = client();
    app.store.reset();
    for _ in 0..10 {
        let r = c.get(app.url(routes::HEALTH)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(set_cookies(&r).is_empty());
        let r = c.get(app.url(routes::READ)).send().await.unwrap();
        assert!(
            set_cookies(&r).is_empty(),
            "a read-only look must not hand out a cookie"
        );
        assert_eq!(text(r).await, "0");
    }
    // No id offered: nothing to look up.
    assert_eq!(
        app.store.calls(),
        Default::default(),
        "no store call without an id"
    );
    for _ in 0..5 {
        // Opened, looked at, never written: not stored, no cookie.
        let r = c.get(app.url(routes::WHOAMI)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(set_cookies(&r).is_empty(), "an empty new session gets no cookie");
        SessionId::parse(&text(r).await).unwrap();
    }
    assert_eq!(app.rows().await, 0);
}

/// For a visitor who *has* a session, routes that do not use it — with no
/// extractor, or with one never called — cost no store call and send no
/// cookie; the read-only route loads without locking.
pub async fn unused_session_costs_nothing<F: Framework>(backend: Backend) {
    let Some(app) = start::<F>(backend).await else {
        return;
    };
    let c = client();
    let cookie = new_visitor(&app, &c).await;
    app.store.reset();
    for path in [routes::HEALTH, routes::NOOP] {
        for _ in 0..25 {
            let r = get(&app, &c, path, &cookie).await;
            assert_eq!(r.status(), 200, "{path}");
            assert!(
                set_cookies(&r).is_empty(),
                "{path}: an untouched session re-sent its cookie"
            );
        }
    }
    assert_eq!(app.store.total(), 0, "{:?}", app.store.calls());
    app.store.reset();
    assert_eq!(text(get(&app, &c, routes::READ, &cookie).await).await, "1");
    let read = app.store.calls();
    assert_eq!(read.get("load"), Some(&1), "{read:?}");
    assert_eq!(
        read.get("lock"),
        None,
        "the read-only route must never lock: {read:?}"
    );
    app.store.reset();
    assert_eq!(text(get(&app, &c, routes::INC, &cookie).await).await, "2");
    assert_eq!(app.store.calls().get("lock"), Some(&1));
}

/// A request that cannot get the lock within the manager's `lock_wait`
/// gets `503` with `Retry-After: 1` promptly, and changes nothing.
pub async fn lock_timeout_answers_503_with_retry_after<F: Framework>(backend: Backend) {
    let Some(app) = App::start::<F>(
        backend,
        |b| b.lock_wait(Duration::from_millis(100)),
        Setup::default(),
    )
    .await
    else {
        return;
    };
    let c = client();
    let cookie = new_visitor(&app, &c).await;
    let holder = tokio::spawn(
        c.get(app.url(routes::HOLD))
            .header("cookie", cookie.clone())
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let t = Instant::now();
    let r = get(&app, &c, routes::INC, &cookie).await;
    let waited = t.elapsed();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(
        waited < Duration::from_millis(1000),
        "waited {waited:?} with lock_wait 100 ms"
    );
    assert_eq!(text(holder.await.unwrap().unwrap()).await, "2");
    // The timed-out request changed nothing.
    assert_eq!(text(get(&app, &c, routes::READ, &cookie).await).await, "2");
}

/// The lock-timeout response is the application's to choose.
pub async fn lock_timeout_response_is_configurable<F: Framework>(backend: Backend) {
    let setup = Setup {
        lock_timeout_429: true,
        ..Setup::default()
    };
    let Some(app) = App::start::<F>(backend, |b| b.lock_wait(Duration::from_millis(100)), setup).await else {
        return;
    };
    let c = client();
    let cookie = new_visitor(&app, &c).await;
    let holder = tokio::spawn(
        c.get(app.url(routes::HOLD))
            .header("cookie", cookie.clone())
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = get(&app, &c, routes::INC, &cookie).await;
    assert_eq!(r.status(), 429);
    assert!(text(r).await.starts_with("busy after"));
    holder.await.unwrap().unwrap();
}

/// The read-only handle never waits for the lock, never sets a cookie, and
/// sees the last committed state.
pub async fn read_only_access_never_waits_for_the_lock<F: Framework>(backend: Backend) {
    let Some(app) = start::<F>(backend).await else {
        return;
    };
    let c = client();
    let cookie = new_visitor(&app, &c).await;
    let holder = tokio::spawn(
        c.get(app.url(routes::HOLD))
            .header("cookie", cookie.clone())
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let t = Instant::now();
    let r = get(&app, &c, routes::READ, &cookie).await;
    let waited = t.elapsed();
    assert!(set_cookies(&r).is_empty(), "a reader never sets cookies");
    // The committed value, while the holder still works on its change.
    assert_eq!(text(r).await, "1");
    assert!(
        waited < Duration::from_millis(300),
        "the reader waited {waited:?}"
    );
    assert_eq!(text(holder.await.unwrap().unwrap()).await, "2");
}

/// Clients without cookies carry the id in a header; a cookie is then
/// ignored and a malformed header value gets a fresh session.
pub async fn id_travels_in_a_header_for_clients_without_cookies<F: Framework>(backend: Backend) {
    let setup = Setup {
        http: HttpConfig {
            carrier: IdCarrier::Header(cloakroom_http::http::HeaderName::from_static("x-session")),
            ..HttpConfig::default()
        },
        ..Setup::default()
    };
    let Some(app) = App::start::<F>(backend, |b| b, setup).await else {
        return;
    };
    let c = client();
    let r = c.get(app.url(routes::INC)).send().await.unwrap();
    assert!(set_cookies(&r).is_empty(), "header mode sets no cookie");
    let id = r.headers()["x-session"].to_str().unwrap().to_owned();
    SessionId::parse(&id).unwrap();
    assert_eq!(text(r).await, "1");
    let r = c
        .get(app.url(routes::INC))
        .header("x-session", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-session"], id.as_str());
    assert_eq!(text(r).await, "2");
    let r = get(&app, &c, routes::INC, &format!("id={id}")).await;
    assert_eq!(text(r).await, "1", "a cookie is ignored in header mode");
    let r = c
        .get(app.url(routes::INC))
        .header("x-session", "../../etc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_ne!(r.headers()["x-session"], id.as_str());
    assert_eq!(text(r).await, "1");
}

/// The default cookie: `HttpOnly`, `Secure`, `SameSite=Lax`, `Path=/`,
/// `Max-Age` of the idle timeout, no `Domain`; re-sent with the same id
/// (sliding `Max-Age`) by each request that saves.
pub async fn default_cookie_attributes<F: Framework>(backend: Backend) {
    let Some(app) = start::<F>(backend).await else {
        return;
    };
    let c = client();
    let r = c.get(app.url(routes::INC)).send().await.unwrap();
    let line = set_cookie(&r).expect("first hit sets the cookie");
    let a = attrs(&line);
    for want in ["httponly", "secure", "samesite=lax", "path=/", "max-age=86400"] {
        assert!(a.iter().any(|x| x == want), "{want} missing from {line}");
    }
    assert!(
        !a.iter().any(|x| x.starts_with("domain=")),
        "no Domain by default: {line}"
    );
    let id = SessionId::parse(&cookie_value(&line)).expect("the cookie carries a well-formed id");
    let again = get(&app, &c, routes::INC, &format!("id={id}")).await;
    let line = set_cookie(&again).expect("a save refreshes the cookie");
    assert_eq!(cookie_value(&line), id.as_str());
}

/// Every cookie attribute can be set.
pub async fn cookie_attributes_are_configurable<F: Framework>(backend: Backend) {
    let setup = Setup {
        http: HttpConfig {
            cookie: CookieConfig {
                name: "sid".into(),
                path: "/app".into(),
                domain: Some("example.test".into()),
                secure: false,
                http_only: false,
                same_site: SameSite::Strict,
                ..CookieConfig::default()
            },
            ..HttpConfig::default()
        },
        ..Setup::default()
    };
    let Some(app) = App::start::<F>(backend, |b| b, setup).await else {
        return;
    };
    let c = client();
    let r = c.get(app.url(routes::INC)).send().await.unwrap();
    let line = set_cookie_named(&r, "sid").expect("the cookie has the configured name");
    let a = attrs(&line);
    for want in ["path=/app", "domain=example.test", "samesite=strict"] {
        assert!(a.iter().any(|x| x == want), "{want} missing: {line}");
    }
    assert!(!a.iter().any(|x| x == "secure" || x == "httponly"), "{line}");
    // The configured name is the one read back.
    let r = get(&app, &c, routes::INC, &line).await;
    assert_eq!(text(r).await, "2");
}

/// A browser-session cookie has no `Max-Age` or `Expires`, and an
/// unchanged id is not re-sent.
pub async fn browser_session_cookie_has_no_max_age_and_is_sent_once<F: Framework>(backend: Backend) {
    let setup = Setup {
        http: HttpConfig {
            cookie: CookieConfig {
                lifetime: CookieLifetime::BrowserSession,
                ..CookieConfig::default()
            },
            ..HttpConfig::default()
        },
        ..Setup::default()
    };
    let Some(app) = App::start::<F>(backend, |b| b, setup).await else {
        return;
    };
    let c = client();
    let r = c.get(app.url(routes::INC)).send().await.unwrap();
    let line = set_cookie(&r).unwrap();
    assert!(
        !attrs(&line)
            .iter()
            .any(|a| a.starts_with("max-age") || a.starts_with("expires")),
        "{line}"
    );
    let r = get(&app, &c, routes::INC, line.split(';').next().unwrap()).await;
    assert!(set_cookies(&r).is_empty(), "an unchanged id is not re-sent");
    assert_eq!(text(r).await, "2");
}

/// Under an absolute timeout the cookie's `Max-Age` counts down to it.
pub async fn absolute_expiry_counts_the_cookie_down<F: Framework>(backend: Backend) {
    let Some(app) = App::start::<F>(
        backend,
        |b| b.absolute_timeout(Some(Duration::from_secs(100))),
        Setup::default(),
    )
    .await
    else {
        return;
    };
    let r = client().get(app.url(routes::INC)).send().await.unwrap();
    let line = set_cookie(&r).unwrap();
    let max_age: u64 = attrs(&line)
        .iter()
        .find_map(|a| a.strip_prefix("max-age=").map(|v| v.parse().unwrap()))
        .unwrap();
    assert!((98..=100).contains(&max_age), "Max-Age {max_age} in {line}");
}

/// A persistent cookie is re-sent only when the stored expiry moved: not
/// for a request that only looked (touch not due), but after a save.
pub async fn persistent_cookie_is_resent_only_when_the_stored_expiry_moves<F: Framework>(backend: Backend) {
    let Some(app) = start::<F>(backend).await else {
        return;
    };
    let c = client();
    let cookie = new_visitor(&app, &c).await;
    let r = get(&app, &c, routes::WHOAMI, &cookie).await;
    assert_eq!(r.status(), 200);
    assert!(
        set_cookies(&r).is_empty(),
        "an untouched session re-sent its cookie"
    );
    let r = get(&app, &c, routes::INC, &cookie).await;
    let line = set_cookie(&r).expect("a save slides the expiry, so the cookie is refreshed");
    assert!(attrs(&line).iter().any(|a| a.starts_with("max-age=")), "{line}");
}

/// Malformed, hostile and unknown ids: a fresh session, never an error;
/// a malformed one never reaches the store, and an unknown one is never
/// adopted. Of duplicate cookies the first well-formed one is used.
pub async fn malformed_ids_get_a_fresh_session<F: Framework>(backend: Backend) {
    let Some(app) = start::<F>(backend).await else {
        return;
    };
    let c = client();
    let existing = cookie_value(&new_visitor(&app, &c).await);
    let unknown = SessionId::generate();
    let big = "a".repeat(8 * 1024);
    let cases: Vec<(&str, String, bool)> = vec![
        ("path traversal", "id=../../etc/passwd".into(), false),
        ("8 KB value", format!("id={big}"), false),
        ("quoted junk", "id=\"\\x00; DROP TABLE sessions\"".into(), false),
        ("one char short", format!("id={}", &existing[..42]), false),
        ("two bogus duplicates", "id=x; id=../y".into(), false),
        ("unknown well-formed id", format!("id={unknown}"), true),
    ];
    for (what, cookie, well_formed) in cases {
        app.store.reset();
        let r = get(&app, &c, routes::INC, &cookie).await;
        assert_eq!(r.status(), 200, "{what}");
        let new = cookie_value(&set_cookie(&r).unwrap_or_else(|| panic!("{what}: no cookie")));
        assert_ne!(new, existing, "{what}");
        assert_ne!(
            new,
            unknown.as_str(),
            "{what}: an offered unknown id must not be adopted"
        );
        assert_eq!(text(r).await, "1", "{what}: not a fresh session");
        let calls = app.store.calls();
        // Only a well-formed id is ever looked up (and found missing).
        assert_eq!(
            calls.get("lock").copied().unwrap_or(0),
            u64::from(well_formed),
            "{what}: {calls:?}"
        );
    }
    let r = get(
        &app,
        &c,
        routes::INC,
        &format!("id=../../x; id={existing}; id={unknown}"),
    )
    .await;
    assert_eq!(
        text(r).await,
        "2",
        "the first well-formed duplicate is the one used"
    );
    // 1 MB: above any HTTP server's header limit, refused before session
    // code runs, and the server carries on. (A client of its own: the
    // server may close that connection.)
    if let Ok(r) = client()
        .get(app.url(routes::INC))
        .header("cookie", format!("id={}", "a".repeat(1024 * 1024)))
        .send()
        .await
    {
        assert!(r.status().is_client_error(), "1 MB cookie: {}", r.status());
    }
    assert_eq!(c.get(app.url(routes::HEALTH)).send().await.unwrap().status(), 200);
}

/// Login cycles the id (fixation): the new id carries the data, the old
/// one is dead, and the old record is gone, not left beside the new one.
pub async fn login_cycles_the_id<F: Framework>(backend: Backend) {
    let Some(app) = start::<F>(backend).await else {
        return;
    };
    let browser = browser();
    let r = browser.get(app.url(routes::INC)).send().await.unwrap();
    let old = cookie_value(&set_cookie(&r).unwrap());
    let r = browser.post(app.url(routes::LOGIN)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let new = cookie_value(&set_cookie(&r).expect("login must send the new id"));
    assert_ne!(new, old);
    assert_eq!(
        text(browser.get(app.url(routes::READ)).send().await.unwrap()).await,
        "1",
        "login keeps the data"
    );
    assert_eq!(
        text(browser.get(app.url(routes::USER)).send().await.unwrap()).await,
        "ann"
    );
    let stale = client();
    assert_eq!(
        text(get(&app, &stale, routes::READ, &format!("id={old}")).await).await,
        "0",
        "the pre-login id must be dead"
    );
    assert_eq!(app.rows().await, 1);
}

/// Logout deletes the session and clears the cookie with the attributes
/// that set it.
pub async fn logout_clears_the_cookie<F: Framework>(backend: Backend) {
    let Some(app) = start::<F>(backend).await else {
        return;
    };
    let browser = browser();
    browser.get(app.url(routes::INC)).send().await.unwrap();
    browser.post(app.url(routes::LOGIN)).send().await.unwrap();
    assert_eq!(app.rows().await, 1);
    let r = browser.post(app.url(routes::LOGOUT)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let line = set_cookie(&r).expect("logout must clear the cookie");
    assert_eq!(text(r).await, "true", "a stored session was deleted");
    let a = attrs(&line);
    assert_eq!(cookie_value(&line), "");
    assert!(a.iter().any(|x| x == "max-age=0"), "{line}");
    assert!(
        a.iter().any(|x| x == "path=/"),
        "removal must match the cookie's Path: {line}"
    );
    assert_eq!(app.rows().await, 0);
    assert_eq!(
        text(browser.get(app.url(routes::READ)).send().await.unwrap()).await,
        "0"
    );
    assert_eq!(
        text(browser.get(app.url(routes::USER)).send().await.unwrap()).await,
        ""
    );
}

/// Using the session again after a logout in the same request starts a
/// fresh session with a new id (a "logged out" flash), never the old one.
pub async fn a_session_used_after_logout_is_a_fresh_one<F: Framework>(backend: Backend) {
    let Some(app) = start::<F>(backend).await else {
        return;
    };
    let c = client();
    let cookie = new_visitor(&app, &c).await;
    let r = c
        .post(app.url(routes::LOGOUT_FLASH))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let line = set_cookie(&r).expect("the flash session's id is sent");
    let fresh = cookie_value(&line);
    assert_ne!(fresh, cookie_value(&cookie));
    SessionId::parse(&fresh).unwrap();
    assert_eq!(
        app.rows().await,
        1,
        "the old session is gone, the flash one stored"
    );
    assert_eq!(text(get(&app, &c, routes::READ, &cookie).await).await, "0");
    assert_eq!(
        text(get(&app, &c, routes::READ, &format!("id={fresh}")).await).await,
        "0"
    );
}

/// A session deleted while a request holds it (logged out from another
/// device): the session is not revived and the request's response
/// survives. Where the delete does not wait for the lock (memory, file,
/// SQLite, Redis), the request's save is dropped and its cookie cleared;
/// where it does (the SQL row locks), the save lands first and the delete
/// removes it after.
pub async fn a_session_deleted_meanwhile_is_not_revived<F: Framework>(backend: Backend) {
    let Some(app) = start::<F>(backend).await else {
        return;
    };
    let c = client();
    let cookie = new_visitor(&app, &c).await;
    let id = SessionId::parse(&cookie_value(&cookie)).unwrap();
    let holder = tokio::spawn(
        c.get(app.url(routes::HOLD))
            .header("cookie", cookie.clone())
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let t = Instant::now();
    assert!(app.manager.delete(&id).await.unwrap());
    let delete_took = t.elapsed();
    let r = holder.await.unwrap().unwrap();
    assert_eq!(
        r.status(),
        200,
        "a save dropped at commit must not break the page"
    );
    let line = set_cookie(&r).expect("the holder's response sets or clears the cookie");
    if !attrs(&line).iter().any(|a| a == "max-age=0") {
        assert!(
            delete_took >= Duration::from_millis(200),
            "the holder saved over a delete that took {delete_took:?}, without waiting for it: {line}"
        );
        println!("{backend:?}: the delete waited {delete_took:?} for the holder's save");
    }
    assert_eq!(
        app.rows().await,
        0,
        "the late save must not bring the session back"
    );
}

/// A handler that answers `5xx`: its changes are rolled back and the lock
/// released at once (not after the lease).
pub async fn a_failed_handler_saves_nothing_and_unlocks<F: Framework>(backend: Backend) {
    let Some(app) = App::start::<F>(backend, |b| b.lease(Duration::from_secs(60)), Setup::default()).await
    else {
        return;
    };
    let c = client();
    let cookie = new_visitor(&app, &c).await;
    assert_eq!(get(&app, &c, routes::FAIL, &cookie).await.status(), 500);
    let t = Instant::now();
    let r = get(&app, &c, routes::INC, &cookie).await;
    assert!(t.elapsed() < Duration::from_secs(2), "waited {:?}", t.elapsed());
    assert_eq!(
        text(r).await,
        "2",
        "the failed handler's write must be rolled back"
    );
}

/// A handler that panics holding the session: nothing saved, the lock
/// released at once (the lease is 60 s).
pub async fn a_panic_saves_nothing_and_unlocks<F: Framework>(backend: Backend) {
    let Some(app) = App::start::<F>(
        backend,
        |b| {
            b.lease(Duration::from_secs(60))
                .lock_wait(Duration::from_secs(30))
        },
        Setup::default(),
    )
    .await
    else {
        return;
    };
    let c = client();
    let cookie = new_visitor(&app, &c).await;
    assert_eq!(get(&app, &c, routes::PANIC, &cookie).await.status(), 500);
    let t = Instant::now();
    let r = get(&app, &c, routes::INC, &cookie).await;
    let waited = t.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "the next request waited {waited:?} for the lock"
    );
    assert_eq!(text(r).await, "2", "the panicking request must not count");
}

/// A client that gives up on a request holding the session: its request
/// is dropped, writes nothing, and the lock is released at once.
pub async fn a_client_that_disconnects_does_not_leave_the_session_locked<F: Framework>(backend: Backend) {
    let Some(app) = App::start::<F>(
        backend,
        |b| {
            b.lease(Duration::from_secs(60))
                .lock_wait(Duration::from_secs(20))
        },
        Setup::default(),
    )
    .await
    else {
        return;
    };
    let c = client();
    let cookie = new_visitor(&app, &c).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gone = impatient
        .get(app.url(routes::HANG))
        .header("cookie", cookie.clone())
        .send()
        .await;
    assert!(gone.is_err(), "the client gives up on {}", routes::HANG);
    let t = Instant::now();
    let r = get(&app, &c, routes::INC, &cookie).await;
    let waited = t.elapsed();
    assert_eq!(text(r).await, "2", "the abandoned request wrote nothing");
    assert!(
        waited < Duration::from_secs(3),
        "waited {waited:?} for an abandoned lock"
    );
}

/// An extractor on a route without the session middleware answers `500`
/// (a configuration error, logged), never panics.
pub async fn an_extractor_without_the_middleware_is_a_500_not_a_panic<F: Framework>() {
    let running = F::start_bare().await;
    let c = client();
    for path in [routes::INC, routes::READ] {
        let r = c
            .get(format!("http://{}{path}", running.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500, "{path}");
    }
    let r = c
        .get(format!("http://{}{}", running.addr, routes::HEALTH))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The `Max-Age` of a `Set-Cookie` line, if it has one.
fn max_age(line: &str) -> Option<u64> {
    attrs(line)
        .iter()
        .find_map(|a| a.strip_prefix("max-age=").map(|v| v.parse().unwrap()))
}

/// Seconds from now to `at`.
fn seconds_until(at: Timestamp) -> i64 {
    (at.as_millis() - Timestamp::now().as_millis()) / 1000
}

async fn post(app: &App, c: &reqwest::Client, path: &str, cookie: &str) -> reqwest::Response {
    c.post(app.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

/// How long a case waits for something that must happen promptly: long
/// enough for a loaded CI machine, far below the 10 s lock wait that a
/// lock that is still held would cost.
const PROMPTLY: Duration = Duration::from_secs(5);

/// "Remember me": a session given `OnInactivity(30 days)` gets a cookie
/// whose `Max-Age` is 30 days, while other sessions keep the manager's
/// default; the expiry is stored with the session, so later requests keep
/// it (in the store and in the cookie), and the session is listed under its
/// principal.
pub async fn remember_me_gets_a_lasting_cookie_that_stays<F: Framework>(backend: Backend) {
    const THIRTY_DAYS: u64 = 30 * 86_400;
    let Some(app) = start::<F>(backend).await else {
        return;
    };
    let c = client();
    let r = c.get(app.url(routes::INC)).send().await.unwrap();
    let line = set_cookie(&r).unwrap();
    assert_eq!(max_age(&line), Some(86_400), "a normal session: {line}");
    let cookie = line.split(';').next().unwrap().to_owned();
    let id = SessionId::parse(&cookie_value(&cookie)).unwrap();

    let r = post(&app, &c, routes::REMEMBER, &cookie).await;
    assert_eq!(r.status(), 200);
    let line = set_cookie(&r).expect("a new expiry re-sends the cookie");
    assert_eq!(cookie_value(&line), id.as_str());
    let days = max_age(&line).expect("a remembered session's cookie lasts");
    assert!(THIRTY_DAYS.abs_diff(days) <= 2, "Max-Age {days} in {line}");
    assert_eq!(text(r).await, "ok");

    let stored = app.manager.open_read_only(&id).await.unwrap().unwrap();
    let left = seconds_until(stored.expires());
    assert!(
        (THIRTY_DAYS as i64 - left).abs() <= 5,
        "stored expiry in {left} s"
    );
    let about = text(get(&app, &c, routes::ABOUT, &cookie).await).await;
    let (head, left) = about.rsplit_once('|').unwrap();
    assert_eq!(head, format!("ann|inactivity:{THIRTY_DAYS}"), "{about}");
    assert!(THIRTY_DAYS.abs_diff(left.parse::<u64>().unwrap()) <= 5, "{about}");
    let listed = app
        .manager
        .sessions_of(&Principal::new("ann").unwrap())
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, app.manager.key(&id).id);

    // A later request keeps the session's own expiry.
    let r = get(&app, &c, routes::INC, &cookie).await;
    let line = set_cookie(&r).expect("a save slides the expiry");
    let days = max_age(&line).unwrap();
    assert!(THIRTY_DAYS.abs_diff(days) <= 2, "the expiry was lost: {line}");
    assert_eq!(text(r).await, "2");

    // Another visitor of the same app still gets the default.
    let r = c.get(app.url(routes::INC)).send().await.unwrap();
    assert_eq!(max_age(&set_cookie(&r).unwrap()), Some(86_400));
}

/// A session set to `OnBrowserClose` gets a cookie without `Max-Age` or
/// `Expires` although the app's cookies are persistent; the store keeps it
/// for the idle timeout, and later requests do not turn the cookie back
/// into a lasting one.
pub async fn a_browser_close_session_gets_a_cookie_without_max_age<F: Framework>(backend: Backend) {
    let Some(app) = start::<F>(backend).await else {
        return;
    };
    let c = client();
    let cookie = new_visitor(&app, &c).await;
    let id = cookie_value(&cookie);
    let r = post(&app, &c, routes::BROWSER_CLOSE, &cookie).await;
    assert_eq!(r.status(), 200);
    let line = set_cookie(&r).expect("the changed expiry re-sends the cookie");
    assert_eq!(cookie_value(&line), id);
    assert!(
        !attrs(&line)
            .iter()
            .any(|a| a.starts_with("max-age") || a.starts_with("expires")),
        "{line}"
    );
    let about = text(get(&app, &c, routes::ABOUT, &cookie).await).await;
    let (head, left) = about.rsplit_once('|').unwrap();
    assert_eq!(head, "-|browser-close", "{about}");
    assert!((86_400 - left.parse::<i64>().unwrap()).abs() <= 5, "{about}");
    let r = get(&app, &c, routes::INC, &cookie).await;
    assert_eq!(r.status(), 200);
    for line in set_cookies(&r) {
        assert!(
            max_age(&line).is_none(),
            "the cookie became persistent again: {line}"
        );
    }
    assert_eq!(text(r).await, "2");
}

/// `commit_now` releases the session in the middle of a handler: another
/// request on the same cookie gets the lock and completes while the first
/// one still waits, and sees its write; the first one's reads still see
/// what it committed, a later change is refused with `Error::Released`,
/// and its end writes nothing over the other request's save.
pub async fn commit_now_lets_the_next_request_in_while_the_handler_runs<F: Framework>(backend: Backend) {
    let Some(midway) = released_midway::<F>(backend, routes::RELEASE).await else {
        return;
    };
    let (app, c, cookie) = (&midway.app, &midway.client, &midway.cookie);
    assert_eq!(text(midway.second).await, "3", "B sees A's committed write");
    let a = midway.first.finish().await;
    assert_eq!(a.status(), 200);
    assert_eq!(
        text(a).await,
        "2 released",
        "A reads what it committed, and a change after commit_now is refused"
    );
    assert_eq!(
        text(get(app, c, routes::READ, cookie).await).await,
        "3",
        "the end of A committed again over B"
    );
}

/// A request to `route` ([`routes::RELEASE`] or [`routes::ROLLBACK`]) that
/// let its session go and now waits, and a second request on the same
/// session that completed meanwhile.
struct ReleasedMidway {
    app: App,
    client: reqwest::Client,
    cookie: String,
    first: Waiting,
    second: reqwest::Response,
}

/// The first request, still running until told to finish.
struct Waiting {
    response: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
    proceed: crate::Gate,
}

impl Waiting {
    /// Let the handler finish, and its response.
    async fn finish(self) -> reqwest::Response {
        self.proceed.open();
        tokio::time::timeout(PROMPTLY, self.response)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    }
}

/// Start the app, make a visitor with a stored session, send it to `route`
/// and, once its handler has released the session, send a second request
/// on the same cookie: it must complete (200) while the first still waits.
/// The default lock wait is 10 s, so a lock still held would make it time
/// out (or answer 503).
async fn released_midway<F: Framework>(backend: Backend, route: &str) -> Option<ReleasedMidway> {
    let probe = Probe::default();
    let setup = Setup {
        probe: probe.clone(),
        ..Setup::default()
    };
    let app = App::start::<F>(backend, |b| b, setup).await?;
    let client = client();
    let cookie = new_visitor(&app, &client).await;
    let response = tokio::spawn(client.get(app.url(route)).header("cookie", cookie.clone()).send());
    tokio::time::timeout(PROMPTLY, probe.released.wait())
        .await
        .unwrap_or_else(|_| panic!("the handler of {route} did not release its session"));
    let second = tokio::time::timeout(PROMPTLY, get(&app, &client, routes::INC, &cookie))
        .await
        .unwrap_or_else(|_| panic!("a request on the same session waited for the handler of {route}"));
    assert_eq!(second.status(), 200);
    assert!(
        !response.is_finished(),
        "the first request must still be waiting for the signal"
    );
    Some(ReleasedMidway {
        app,
        client,
        cookie,
        first: Waiting {
            response,
            proceed: probe.proceed,
        },
        second,
    })
}

/// A session created by the handler and committed early still gets its
/// cookie at the end of the request.
pub async fn an_early_commit_of_a_new_session_still_sets_its_cookie<F: Framework>(backend: Backend) {
    let probe = Probe::default();
    probe.proceed.open();
    let setup = Setup {
        probe: probe.clone(),
        ..Setup::default()
    };
    let Some(app) = App::start::<F>(backend, |b| b, setup).await else {
        return;
    };
    let c = client();
    let r = c.get(app.url(routes::RELEASE)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let line = set_cookie(&r).expect("the early-committed new session needs its id");
    assert_eq!(max_age(&line), Some(86_400), "{line}");
    assert_eq!(text(r).await, "1 released");
    let cookie = line.split(';').next().unwrap().to_owned();
    assert_eq!(text(get(&app, &c, routes::READ, &cookie).await).await, "1");
    assert_eq!(app.rows().await, 1);
}

/// `rollback` mid-handler discards the handler's change and releases the
/// lock at once: another request proceeds while the first still runs and
/// sees the old value; the first reads the stored value and cannot change
/// the session any more; nothing is written at its end.
pub async fn rollback_discards_and_releases_early<F: Framework>(backend: Backend) {
    let Some(midway) = released_midway::<F>(backend, routes::ROLLBACK).await else {
        return;
    };
    let (app, c, cookie) = (&midway.app, &midway.client, &midway.cookie);
    assert_eq!(
        text(midway.second).await,
        "2",
        "the rolled-back 999 must not be seen"
    );
    let a = midway.first.finish().await;
    assert_eq!(a.status(), 200);
    assert!(
        set_cookies(&a).is_empty(),
        "a rolled-back session sends no cookie"
    );
    assert_eq!(text(a).await, "1 released");
    assert_eq!(text(get(app, c, routes::READ, cookie).await).await, "2");
}

/// `flush` deletes the stored session and goes on with a fresh one: with
/// nothing written after, the response only clears the old id; with a
/// write after, it carries only the new id. The old id is dead either way.
pub async fn flush_deletes_and_goes_on_with_a_fresh_session<F: Framework>(backend: Backend) {
    let Some(app) = start::<F>(backend).await else {
        return;
    };
    let c = client();
    let cookie = new_visitor(&app, &c).await;
    let old = cookie_value(&cookie);
    let r = post(&app, &c, routes::FLUSH, &cookie).await;
    assert_eq!(r.status(), 200);
    let lines = set_cookies(&r);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(cookie_value(&lines[0]), "", "only a removal: {lines:?}");
    assert!(attrs(&lines[0]).iter().any(|a| a == "max-age=0"), "{lines:?}");
    assert_eq!(text(r).await, "true");
    assert_eq!(app.rows().await, 0);
    assert_eq!(text(get(&app, &c, routes::READ, &cookie).await).await, "0");

    let cookie = new_visitor(&app, &c).await;
    let old_too = cookie_value(&cookie);
    let r = post(&app, &c, routes::FLUSH_KEEP, &cookie).await;
    assert_eq!(r.status(), 200);
    let lines = set_cookies(&r);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let fresh = cookie_value(&lines[0]);
    assert!(fresh != old && fresh != old_too && !fresh.is_empty(), "{lines:?}");
    SessionId::parse(&fresh).unwrap();
    assert_eq!(
        app.rows().await,
        1,
        "the old session is gone, the fresh one stored"
    );
    assert_eq!(text(get(&app, &c, routes::READ, &cookie).await).await, "0");
    let fresh = format!("id={fresh}");
    assert_eq!(text(get(&app, &c, routes::USER, &fresh).await).await, "guest");
    assert_eq!(text(get(&app, &c, routes::READ, &fresh).await).await, "0");
}

/// Under the optimistic policy, a request whose session another writer
/// saved meanwhile answers `409 Conflict` (not `500`), saves nothing, and
/// is not run again unless the app asks for it.
pub async fn an_optimistic_conflict_at_commit_answers_409<F: Framework>(backend: Backend) {
    let probe = Probe::default();
    let setup = Setup {
        probe: probe.clone(),
        ..Setup::default()
    };
    let Some(app) = App::start::<F>(backend, |b| b.policy(Policy::Optimistic), setup).await else {
        return;
    };
    let c = client();
    let cookie = new_visitor(&app, &c).await;
    let id = SessionId::parse(&cookie_value(&cookie)).unwrap();
    let r = get(&app, &c, routes::RACE, &cookie).await;
    assert_eq!(r.status(), 409);
    assert!(r.headers().get("retry-after").is_none());
    assert_eq!(probe.race_runs(), 1, "no retry unless asked for");
    let stored = app.manager.open_read_only(&id).await.unwrap().unwrap();
    assert_eq!(
        stored.get::<u64>("n").unwrap(),
        Some(1),
        "the conflicting save was dropped"
    );
    assert_eq!(
        stored.get::<bool>("raced").unwrap(),
        Some(true),
        "the other writer's save stands"
    );
    // Sent again by the client, it goes through.
    let r = get(&app, &c, routes::RACE, &cookie).await;
    assert_eq!(r.status(), 200);
    assert_eq!(text(r).await, "2");
    assert_eq!(probe.race_runs(), 2);
}

/// With `retry_conflicts`, a safe request whose commit conflicts is run
/// again on a fresh session and succeeds, the handler having run twice; an
/// unsafe one is not run again and answers `409`.
pub async fn retry_conflicts_runs_a_safe_request_again<F: Framework>(backend: Backend) {
    let probe = Probe::default();
    let setup = Setup {
        probe: probe.clone(),
        retry_conflicts: 2,
        ..Setup::default()
    };
    let Some(app) = App::start::<F>(backend, |b| b.policy(Policy::Optimistic), setup).await else {
        return;
    };
    let c = client();
    let cookie = new_visitor(&app, &c).await;
    let id = SessionId::parse(&cookie_value(&cookie)).unwrap();
    let r = get(&app, &c, routes::RACE, &cookie).await;
    assert_eq!(r.status(), 200);
    assert_eq!(text(r).await, "2");
    assert_eq!(
        probe.race_runs(),
        2,
        "the handler ran twice: a conflict, then a clean run"
    );
    let stored = app.manager.open_read_only(&id).await.unwrap().unwrap();
    assert_eq!(stored.get::<u64>("n").unwrap(), Some(2), "counted once");
    assert_eq!(stored.get::<bool>("raced").unwrap(), Some(true));

    let other = new_visitor(&app, &c).await;
    let r = post(&app, &c, routes::RACE, &other).await;
    assert_eq!(r.status(), 409, "a POST is never run again");
    assert_eq!(probe.race_runs(), 3);
}
