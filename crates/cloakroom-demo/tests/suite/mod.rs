//! The HTTP-level suite, one function per promise, each taking the store URL
//! so every backend runs the same checks (`tests/http.rs` calls them).

use std::time::{Duration, Instant};

use cloakroom::SessionId;

use crate::support::{cookie_value, set_cookie, TestApp};

/// Seed 001: one visitor, six tabs at once, slow and fast pages mixed, 50
/// requests per tab — every hit counts.
pub async fn six_tabs(store_url: &str) {
    const TABS: usize = 6;
    const PER_TAB: usize = 50;
    let app = TestApp::start(store_url).await;
    let browser = app.browser();
    let started = Instant::now();

    // The visitor's first page sets the cookie, as it does before a reader
    // starts opening stories in tabs; it is the first of tab 0's requests.
    let first = browser.get(app.url("/")).send().await.unwrap();
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
            let (mut slow, mut fast, mut max_wait) = (0u32, 0u32, Duration::ZERO);
            let skip = usize::from(tab == 0);
            for n in skip..PER_TAB {
                // Every tenth request overall is the 300 ms page.
                let is_slow = (tab * PER_TAB + n) % 10 == 5;
                let path = if is_slow { "/slow" } else { "/" };
                let t = Instant::now();
                let r = browser.get(format!("{base}{path}")).send().await.unwrap();
                assert_eq!(r.status(), 200, "tab {tab} request {n} {path}");
                max_wait = max_wait.max(t.elapsed());
                if is_slow {
                    slow += 1;
                } else {
                    fast += 1;
                }
            }
            (tab, slow, fast, max_wait)
        }));
    }
    let mut total = 1;
    for t in tabs {
        let (tab, slow, fast, max_wait) = t.await.unwrap();
        total += slow + fast;
        println!("  tab {tab}: {fast} fast + {slow} slow requests, slowest answer {max_wait:?}");
    }
    let report = app.hits(&browser).await;
    println!(
        "six tabs on {store_url}: {total} requests in {:?} -> hit count {}, session rows {}",
        started.elapsed(),
        report.hits,
        app.rows().await
    );
    assert_eq!(total as usize, TABS * PER_TAB);
    assert_eq!(
        report.hits,
        (TABS * PER_TAB) as u64,
        "a hit was lost or counted twice"
    );
    assert_eq!(app.rows().await, 1, "all tabs share one session");
}

/// Visitors without a cookie who only look leave nothing behind, and a route
/// that never touches the session costs no store call at all.
pub async fn lookers_leave_no_rows(store_url: &str) {
    let app = TestApp::start(store_url).await;
    let client = app.bare_client();
    app.store.reset();
    for _ in 0..20 {
        let r = client.get(app.url("/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(set_cookie(&r).is_none());
    }
    assert_eq!(
        app.store.calls(),
        Default::default(),
        "/health must not call the store"
    );
    for _ in 0..20 {
        let r = client.get(app.url("/hits")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            set_cookie(&r).is_none(),
            "a read-only look must not hand out a cookie"
        );
        let report: cloakroom_demo::HitsReport = r.json().await.unwrap();
        assert_eq!(report, Default::default());
    }
    // No id offered: nothing to look up.
    assert_eq!(
        app.store.calls(),
        Default::default(),
        "/hits without a cookie must not call the store"
    );
    assert_eq!(app.rows().await, 0);
}

/// The layer's overhead on a route that does not use the session, for a
/// visitor who *has* a session: measured in store calls.
pub async fn unused_session_costs_nothing(store_url: &str) {
    let app = TestApp::start(store_url).await;
    let browser = app.browser();
    assert_eq!(browser.get(app.url("/")).send().await.unwrap().status(), 200);
    app.store.reset();
    const N: u64 = 100;
    for _ in 0..N {
        let r = browser.get(app.url("/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            set_cookie(&r).is_none(),
            "an untouched session must not re-send its cookie"
        );
    }
    let health_calls = app.store.total();
    // For comparison: the read-only route does one load, no lock...
    app.store.reset();
    let report = app.hits(&browser).await;
    assert_eq!(report.hits, 1);
    let hits_calls = app.store.calls();
    // ...and the counting route locks and saves.
    app.store.reset();
    assert_eq!(browser.get(app.url("/")).send().await.unwrap().status(), 200);
    let index_calls = app.store.calls();
    println!(
        "store calls on {store_url}: {health_calls} for {N} requests to /health (session cookie sent); \
         /hits {hits_calls:?}; / {index_calls:?}"
    );
    assert_eq!(health_calls, 0);
    assert_eq!(hits_calls.get("load"), Some(&1));
    assert_eq!(
        hits_calls.get("lock"),
        None,
        "the read-only route must never lock"
    );
    assert_eq!(index_calls.get("lock"), Some(&1));
}

/// A handler that panics while holding the session: nothing of its change is
/// saved, and the lock is released at once — the next request does not wait
/// for the (long) lease.
pub async fn panic_releases_the_lock(store_url: &str) {
    let app = TestApp::start_with(
        store_url,
        |b| {
            b.lease(Duration::from_secs(60))
                .lock_wait(Duration::from_secs(30))
        },
        |l| l,
    )
    .await;
    let browser = app.browser();
    assert_eq!(browser.get(app.url("/")).send().await.unwrap().status(), 200);
    let r = browser.get(app.url("/panic")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let t = Instant::now();
    let r = browser.get(app.url("/")).send().await.unwrap();
    let waited = t.elapsed();
    assert_eq!(r.status(), 200);
    println!("after a panic on {store_url}: next request answered in {waited:?} (lease 60 s)");
    assert!(
        waited < Duration::from_secs(3),
        "the next request waited {waited:?} for the lock"
    );
    assert_eq!(
        app.hits(&browser).await.hits,
        2,
        "the panicking request must not count"
    );
}

/// The cookie's attributes, from the raw response headers.
pub async fn cookie_attributes(store_url: &str) {
    let app = TestApp::start(store_url).await;
    let browser = app.browser();
    let r = browser.get(app.url("/")).send().await.unwrap();
    let line = set_cookie(&r).expect("first hit sets the cookie");
    let attrs: Vec<String> = line.split(';').map(|a| a.trim().to_ascii_lowercase()).collect();
    for want in ["httponly", "secure", "samesite=lax", "path=/", "max-age=86400"] {
        assert!(attrs.iter().any(|a| a == want), "{want} missing from {line}");
    }
    assert!(
        !attrs.iter().any(|a| a.starts_with("domain=")),
        "no Domain by default: {line}"
    );
    let id = SessionId::parse(&cookie_value(&line)).expect("the cookie carries a well-formed id");
    // A persistent cookie is re-sent by each request that uses the session,
    // so Max-Age slides with the idle timeout; the id stays the same.
    let again = browser.get(app.url("/")).send().await.unwrap();
    let line2 = set_cookie(&again).expect("a used session refreshes its cookie");
    assert_eq!(cookie_value(&line2), id.as_str());
}

/// Malformed, hostile and unknown ids: a fresh session, never an error, and
/// a malformed one never reaches the store.
pub async fn malformed_cookies_get_a_fresh_session(store_url: &str) {
    let app = TestApp::start(store_url).await;
    let client = app.bare_client();
    let existing = {
        let r = client.get(app.url("/")).send().await.unwrap();
        cookie_value(&set_cookie(&r).unwrap())
    };
    let unknown = SessionId::generate();
    let big = "a".repeat(200 * 1024);
    let cases: Vec<(&str, String, bool)> = vec![
        ("path traversal", "id=../../etc/passwd".into(), false),
        ("200 KB value", format!("id={big}"), false),
        ("quoted junk", "id=\"\\x00; DROP TABLE sessions\"".into(), false),
        ("one char short", format!("id={}", &existing[..42]), false),
        ("two bogus duplicates", "id=x; id=../y".into(), false),
        ("unknown well-formed id", format!("id={unknown}"), true),
    ];
    for (what, cookie, well_formed) in cases {
        app.store.reset();
        let r = client
            .get(app.url("/"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{what}");
        let new = cookie_value(&set_cookie(&r).unwrap_or_else(|| panic!("{what}: no cookie")));
        assert_ne!(new, existing, "{what}");
        assert_ne!(
            new,
            unknown.as_str(),
            "{what}: an offered unknown id must not be adopted"
        );
        assert!(
            r.text().await.unwrap().contains("<strong id=hits>1 hit</strong>"),
            "{what}: not a fresh session"
        );
        let calls = app.store.calls();
        let locks = calls.get("lock").copied().unwrap_or(0);
        // Only a well-formed id is ever looked up (and it is found missing).
        assert_eq!(locks, u64::from(well_formed), "{what}: {calls:?}");
    }
    // Duplicate cookies: the first well-formed one is used, bogus ones skipped.
    let r = client
        .get(app.url("/"))
        .header("cookie", format!("id=../../x; id={existing}; id={unknown}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("<strong id=hits>2 hits</strong>"));
    // 1 MB: above the HTTP server's header limit, refused before any session
    // code runs (431), and the server carries on.
    let r = client
        .get(app.url("/"))
        .header("cookie", format!("id={}", "a".repeat(1024 * 1024)))
        .send()
        .await;
    if let Ok(r) = r {
        assert!(r.status().is_client_error(), "1 MB cookie: {}", r.status());
    }
    assert_eq!(client.get(app.url("/health")).send().await.unwrap().status(), 200);
}

/// Login cycles the id (fixation): the new cookie carries the data, the old
/// one no longer works.
pub async fn login_cycles_the_id(store_url: &str) {
    let app = TestApp::start(store_url).await;
    let browser = app.browser();
    let r = browser.get(app.url("/")).send().await.unwrap();
    let old = cookie_value(&set_cookie(&r).unwrap());
    let r = browser
        .post(app.url("/login"))
        .form(&[("user", "ann")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let new = cookie_value(&set_cookie(&r).expect("login must send the new id"));
    assert_ne!(new, old);
    let report = app.hits(&browser).await;
    assert_eq!(report.hits, 1, "login keeps the session's data");
    assert_eq!(report.user.as_deref(), Some("ann"));
    assert_eq!(report.session.as_deref(), Some(&new[..8]));
    // Someone holding the pre-login id gets nothing.
    let stale = app.bare_client();
    let r = stale
        .get(app.url("/hits"))
        .header("cookie", format!("id={old}"))
        .send()
        .await
        .unwrap();
    let report: cloakroom_demo::HitsReport = r.json().await.unwrap();
    assert_eq!(report, Default::default(), "the pre-login id must be dead");
    assert_eq!(
        app.rows().await,
        1,
        "the old record is gone, not left beside the new one"
    );
}

/// Logout deletes the session and clears the cookie.
pub async fn logout_clears_the_cookie(store_url: &str) {
    let app = TestApp::start(store_url).await;
    let browser = app.browser();
    browser.get(app.url("/")).send().await.unwrap();
    browser
        .post(app.url("/login"))
        .form(&[("user", "bob")])
        .send()
        .await
        .unwrap();
    assert_eq!(app.rows().await, 1);
    let r = browser.post(app.url("/logout")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let line = set_cookie(&r).expect("logout must clear the cookie");
    let attrs: Vec<String> = line.split(';').map(|a| a.trim().to_ascii_lowercase()).collect();
    assert_eq!(cookie_value(&line), "");
    assert!(attrs.iter().any(|a| a == "max-age=0"), "{line}");
    assert!(
        attrs.iter().any(|a| a == "path=/"),
        "removal must match the cookie's Path: {line}"
    );
    assert_eq!(app.rows().await, 0);
    let report = app.hits(&browser).await;
    assert_eq!(report, Default::default(), "the browser dropped its cookie");
}

/// The six-tab workload (smaller) under the `Lossy` policy: no lock. Returns
/// how many hits were lost.
pub async fn tabs_without_lock(store_url: &str) -> u64 {
    const TABS: usize = 3;
    const PER_TAB: usize = 10;
    let app = TestApp::start_with(store_url, |b| b.policy(cloakroom::Policy::Lossy), |l| l).await;
    let browser = app.browser();
    assert_eq!(browser.get(app.url("/")).send().await.unwrap().status(), 200);
    let mut tabs = Vec::new();
    for tab in 0..TABS {
        let (browser, base) = (browser.clone(), app.url(""));
        tabs.push(tokio::spawn(async move {
            for n in usize::from(tab == 0)..PER_TAB {
                let path = if n % 3 == 0 { "/slow" } else { "/" };
                let r = browser.get(format!("{base}{path}")).send().await.unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for t in tabs {
        t.await.unwrap();
    }
    let hits = app.hits(&browser).await.hits;
    println!("without the lock: {hits} of {} hits counted", TABS * PER_TAB);
    (TABS * PER_TAB) as u64 - hits
}

/// The page's experiment over HTTP: `TABS` × `PER_TAB` concurrent POSTs at
/// the locked counter, then at the unlocked one. The locked count is exact
/// (and every response saw a different count); the unlocked one runs in a
/// session of its own, under its own cookie. Returns how many updates the
/// unlocked counter lost.
pub async fn experiment_counters(store_url: &str) -> u64 {
    const TABS: usize = 6;
    const PER_TAB: usize = 20;
    const TOTAL: u64 = (TABS * PER_TAB) as u64;
    let app = TestApp::start(store_url).await;
    let browser = app.browser();

    // Reset first: it creates each session and sets its cookie, so the
    // concurrent requests share one id.
    let r = browser.post(app.url("/count/reset")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let main_cookie = set_cookie(&r).expect("the reset creates the visitor's session");
    let r = browser.post(app.url("/lossy/count/reset")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let lossy_cookie = r
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("id-lossy="))
        .map(str::to_owned)
        .expect("the lossy reset sets the id-lossy cookie");
    assert!(
        lossy_cookie.to_ascii_lowercase().contains("path=/lossy"),
        "{lossy_cookie}"
    );
    assert_ne!(
        cookie_value(&main_cookie),
        lossy_cookie
            .split(';')
            .next()
            .unwrap()
            .trim_start_matches("id-lossy="),
        "two sessions, two ids"
    );

    let mut runs = Vec::new();
    for path in ["/count", "/lossy/count"] {
        let started = Instant::now();
        let tabs: Vec<_> = (0..TABS)
            .map(|_| {
                let (browser, url) = (browser.clone(), app.url(path));
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    for _ in 0..PER_TAB {
                        let r = browser.post(&url).send().await.unwrap();
                        assert_eq!(r.status(), 200, "POST {url}");
                        seen.push(r.json::<cloakroom_demo::CountReport>().await.unwrap().hits);
                    }
                    seen
                })
            })
            .collect();
        let mut seen = Vec::new();
        for tab in tabs {
            seen.extend(tab.await.unwrap());
        }
        let elapsed = started.elapsed();
        let r = browser.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let final_count = r.json::<cloakroom_demo::CountReport>().await.unwrap().hits;
        println!("experiment on {store_url}: {TOTAL} × POST {path} in {elapsed:?} -> count {final_count}");
        runs.push((seen, final_count));
    }
    let (mut locked_seen, locked) = runs.remove(0);
    let (_, lossy) = runs.remove(0);
    assert_eq!(locked, TOTAL, "the locked counter lost or doubled an update");
    locked_seen.sort_unstable();
    assert_eq!(
        locked_seen,
        (1..=TOTAL).collect::<Vec<_>>(),
        "each locked request saw the count one higher than another"
    );
    assert!((1..=TOTAL).contains(&lossy), "lossy count {lossy}");
    // The counters did not touch the page's hit count, and each namespace
    // holds the one session of this visitor.
    assert_eq!(app.hits(&browser).await.hits, 0);
    assert_eq!(app.rows().await, 1);
    assert_eq!(app.store.inner.count(app.lossy.namespace()).await.unwrap(), 1);
    TOTAL - lossy
}
