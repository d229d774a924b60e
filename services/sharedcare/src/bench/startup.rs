//! `bench startup`: time from spawning `sharedcare up` to `/readyz`, and idle memory.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::harness::{UpProcess, http_ok};

pub(crate) async fn startup() -> anyhow::Result<()> {
    let mut ready_ms = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..5 {
        let (p, spawn_to_listen) = UpProcess::start()?;
        let listening = Instant::now();
        while !http_ok(&p.http, "/readyz").await {
            if listening.elapsed() > Duration::from_secs(30) {
                bail!("/readyz never answered 200");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        ready_ms.push((spawn_to_listen + listening.elapsed()).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_secs(3)).await;
        rss.push(p.rss_kib()?);
    }
    ready_ms.sort_by(f64::total_cmp);
    rss.sort();
    let ([min, _, median, _, max], [_, _, rss_median, _, _]) = (ready_ms.as_slice(), rss.as_slice()) else {
        bail!("expected five start-ups");
    };
    println!("up: spawn → /readyz 200, median of 5: {median:.0} ms (min {min:.0}, max {max:.0})");
    println!(
        "up: idle RSS after 3 s, median of 5: {:.1} MiB",
        *rss_median as f64 / 1024.0
    );
    Ok(())
}
