//! One OS process of a cross-process test.
//!
//! ```text
//! cloakroom-worker increment <store-url> <namespace> <id> <tasks> <cycles>
//!     <tasks> tasks share <cycles> serialized increments of the session's
//!     counter; prints "done <cycles>" and exits 0, or exits 1 on any error.
//! cloakroom-worker hold <store-url> <namespace> <id> <lease-ms>
//!     opens the session (taking its lock, lease renewed in the background),
//!     increments the counter without committing, prints "locked", and waits
//!     to be killed mid-request.
//! cloakroom-worker hold-then-save <store-url> <namespace> <id> <lease-ms> <value>
//!     opens the session (taking its lock, lease renewed in the background),
//!     sets the counter to <value> without committing, prints "locked", and
//!     waits for a line on stdin (meanwhile the test may freeze it with
//!     SIGSTOP); then commits and prints "saved", or "failed <Kind>" with
//!     the error's kind (`LeaseLost`), and exits 0 either way.
//! cloakroom-worker churn <store-url> <namespace> <id>
//!     saves the session over and over with records of varying size,
//!     printing "churning" first, until it is killed mid-save.
//! cloakroom-worker rotate <store-url> <namespace> <id>
//!     gives the session a new id over and over (`cycle_id` + commit),
//!     printing "rotating <old> <new>" before each commit and "rotated
//!     <new>" after it, until it is killed, possibly mid-rotation.
//! ```

use std::io::{BufRead as _, Write as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cloakroom::{Manager, Namespace, SessionId};
use cloakroom_integration_tests::HITS;

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cloakroom-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn manager(url: &str, namespace: &str, lease: Duration) -> BoxResult<Manager> {
    let store = cloakroom::open(url).await?;
    Ok(Manager::builder(store, Namespace::new(namespace)?)
        .lease(lease)
        .lock_wait(Duration::from_secs(120))
        .require_multi_process(true)
        .build()?)
}

async fn run(args: &[String]) -> BoxResult<()> {
    match args {
        [cmd, url, ns, id, tasks, cycles] if cmd == "increment" => {
            let id = SessionId::parse(id)?;
            let (tasks, cycles): (usize, usize) = (tasks.parse()?, cycles.parse()?);
            let manager = Arc::new(manager(url, ns, Duration::from_secs(30)).await?);
            let mut handles = Vec::new();
            for t in 0..tasks {
                let (manager, id) = (Arc::clone(&manager), id.clone());
                let share = cycles / tasks + usize::from(t < cycles % tasks);
                handles.push(tokio::spawn(async move {
                    for _ in 0..share {
                        let mut s = manager.open(Some(&id)).await?;
                        if s.is_new() {
                            return Err(cloakroom::Error::Gone);
                        }
                        let n: u64 = s.get(HITS)?.unwrap_or(0);
                        s.insert(HITS, &(n + 1))?;
                        s.commit().await?;
                    }
                    Ok::<_, cloakroom::Error>(())
                }));
            }
            for h in handles {
                h.await??;
            }
            println!("done {cycles}");
            Ok(())
        }
        [cmd, url, ns, id, lease_ms] if cmd == "hold" => {
            let id = SessionId::parse(id)?;
            let manager = manager(url, ns, Duration::from_millis(lease_ms.parse()?)).await?;
            let mut s = manager.open(Some(&id)).await?;
            let n: u64 = s.get(HITS)?.unwrap_or(0);
            s.insert(HITS, &(n + 1))?;
            println!("locked");
            std::io::stdout().flush()?;
            // Mid-request: the lock is held and the change is not committed.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(s);
            Ok(())
        }
        [cmd, url, ns, id, lease_ms, value] if cmd == "hold-then-save" => {
            let id = SessionId::parse(id)?;
            let value: u64 = value.parse()?;
            let manager = manager(url, ns, Duration::from_millis(lease_ms.parse()?)).await?;
            let mut s = manager.open(Some(&id)).await?;
            s.insert(HITS, &value)?;
            println!("locked");
            std::io::stdout().flush()?;
            // Mid-request until told to save: a blocking read on a worker
            // thread of its own, so the runtime (and the lease renewal) runs.
            tokio::task::spawn_blocking(|| std::io::stdin().lock().read_line(&mut String::new())).await??;
            match s.commit().await {
                Ok(_) => println!("saved"),
                Err(e) => println!("failed {}", error_kind(&e)),
            }
            std::io::stdout().flush()?;
            Ok(())
        }
        [cmd, url, ns, id] if cmd == "churn" => {
            // Save ever-changing records of varying size as fast as possible,
            // to be SIGKILLed at a random moment mid-save.
            let id = SessionId::parse(id)?;
            // A short lease, renewed while alive, so that after the kill the
            // next round takes over quickly on lease-based stores.
            let manager = manager(url, ns, Duration::from_millis(500)).await?;
            println!("churning");
            std::io::stdout().flush()?;
            for round in 0u64.. {
                let mut s = manager.open(Some(&id)).await?;
                let n: u64 = s.get(HITS)?.unwrap_or(0);
                s.insert(HITS, &(n + 1))?;
                let size = 1 + (round as usize * 7919) % (256 * 1024);
                s.insert("blob", &vec![(round % 251) as u8; size])?;
                s.commit().await?;
            }
            Ok(())
        }
        [cmd, url, ns, id] if cmd == "rotate" => {
            let mut id = SessionId::parse(id)?;
            let manager = manager(url, ns, Duration::from_millis(500)).await?;
            loop {
                let mut s = manager.open(Some(&id)).await?;
                if s.is_new() {
                    return Err(format!("session {} vanished", id.as_str()).into());
                }
                s.cycle_id();
                let new = s.id().clone();
                println!("rotating {} {}", id.as_str(), new.as_str());
                std::io::stdout().flush()?;
                s.commit().await?;
                println!("rotated {}", new.as_str());
                std::io::stdout().flush()?;
                id = new;
            }
        }
        _ => Err("usage: cloakroom-worker increment URL NS ID TASKS CYCLES | hold URL NS ID LEASE_MS | hold-then-save URL NS ID LEASE_MS VALUE | churn URL NS ID | rotate URL NS ID".into()),
    }
}

/// The name of an error's variant (`LeaseLost`, `Unavailable`, …).
fn error_kind(e: &cloakroom::Error) -> String {
    let debug = format!("{e:?}");
    debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_owned()
}
