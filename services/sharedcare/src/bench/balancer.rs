//! A TCP balancer for `bench chaos`: one address in front of a service's replicas. Each new
//! connection goes to the next replica that accepts it, as a Kubernetes Service spreads
//! connections over its pods; a replica that dies cuts the connections it held, and clients
//! that reconnect reach another. (No crate was worth a dependency for forty lines of
//! `copy_bidirectional`.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running balancer; stops when dropped.
pub struct Balancer {
    /// Where clients connect.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Balancer {
    /// Listens on a free loopback port in front of `replicas` (`host:port` each).
    pub async fn start(replicas: Vec<String>) -> std::io::Result<Balancer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let replicas = Arc::new(replicas);
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let first = next.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(forward(inbound, replicas.clone(), first));
            }
        });
        Ok(Balancer { addr, task })
    }
}

/// Joins `inbound` to the first replica from `first` on that accepts within a second; with
/// none, the client's connection is closed.
async fn forward(mut inbound: TcpStream, replicas: Arc<Vec<String>>, first: usize) {
    for k in 0..replicas.len() {
        let Some(target) = replicas.get((first + k) % replicas.len()) else {
            continue;
        };
        if let Ok(Ok(mut out)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(target)).await {
            let _ = (inbound.set_nodelay(true), out.set_nodelay(true));
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            return;
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A replica that answers each connection with its name.
    async fn replica(name: &'static str) -> (String, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(name.as_bytes()).await;
            }
        });
        (addr, task)
    }

    async fn ask(b: &Balancer) -> String {
        let mut s = TcpStream::connect(b.addr).await.expect("connect");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }

    #[tokio::test]
    async fn connections_alternate_and_a_dead_replica_is_passed_over() {
        let (a, ta) = replica("a").await;
        let (b, _tb) = replica("b").await;
        let bal = Balancer::start(vec![a, b]).await.expect("balancer");
        let got = [ask(&bal).await, ask(&bal).await, ask(&bal).await, ask(&bal).await];
        assert_eq!(got, ["a", "b", "a", "b"]);
        ta.abort();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            [ask(&bal).await, ask(&bal).await],
            ["b", "b"],
            "only the live replica answers"
        );
    }
}
