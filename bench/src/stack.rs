//! The system under test: the release binaries, started as real processes on free ports
//! over a fresh data directory, the way scripts/start runs them.

use std::process::Command;
use std::time::Duration;

use tandem::testing::{Proc, bin, free_port, wait_serving};

pub struct Stack {
    /// Held so the data directory lives as long as the stack.
    _dir: tempfile::TempDir,
    procs: Vec<Proc>,
    pub user_v1: String,
    /// http://127.0.0.1:PORT of the edge.
    pub edge: String,
}

pub struct Options {
    /// Percent of user traffic the edge sends to v1.
    pub p: u8,
}

impl Stack {
    pub async fn start(options: Options) -> anyhow::Result<Stack> {
        let dir = tempfile::tempdir()?;
        let addr = |port: u16| format!("127.0.0.1:{port}");
        let (v1, v2, orders, edge) = (free_port(), free_port(), free_port(), free_port());
        std::fs::write(
            dir.path().join("routing.json"),
            format!(r#"{{"P": {}}}"#, options.p),
        )?;
        let mut procs = Vec::new();
        let mut start = |name: &str, binary: &str, args: Vec<String>| {
            let mut command = Command::new(bin(binary));
            command
                .current_dir(dir.path())
                .args(args)
                .env("RUST_LOG", "warn");
            procs.push(Proc::start(name, &mut command, dir.path()));
        };
        // Each process gets an ops port of its own.
        let ops = || addr(free_port());
        start(
            "user-v1",
            "user-svc",
            vec![
                "--flavor".into(),
                "v1".into(),
                "--listen".into(),
                addr(v1),
                "--ops-listen".into(),
                ops(),
            ],
        );
        start(
            "user-v2",
            "user-svc",
            vec![
                "--flavor".into(),
                "v2".into(),
                "--listen".into(),
                addr(v2),
                "--ops-listen".into(),
                ops(),
            ],
        );
        start(
            "order-svc",
            "order-svc",
            vec![
                "--listen".into(),
                addr(orders),
                "--ops-listen".into(),
                ops(),
            ],
        );
        start(
            "edge",
            "edge",
            vec![
                "--listen".into(),
                addr(edge),
                "--user-v1".into(),
                format!("http://{}", addr(v1)),
                "--user-v2".into(),
                format!("http://{}", addr(v2)),
                "--orders".into(),
                format!("http://{}", addr(orders)),
            ],
        );
        for a in [addr(v1), addr(v2), addr(orders)] {
            wait_serving(&a, Duration::from_secs(30)).await;
        }
        let stack = Stack {
            _dir: dir,
            procs,
            user_v1: addr(v1),
            edge: format!("http://{}", addr(edge)),
        };
        let health = format!("{}/health", stack.edge);
        tandem::testing::eventually(Duration::from_secs(30), "the edge to be healthy", || {
            let health = health.clone();
            async move {
                let reply = reqwest::get(&health).await.ok()?;
                reply.status().is_success().then_some(())
            }
        })
        .await;
        Ok(stack)
    }

    /// CPU time (user + system) each process has used so far, in seconds, with the
    /// load generator itself as "load generator".
    pub fn cpu_seconds(&self) -> Vec<(String, f64)> {
        let mut all: Vec<(String, f64)> = self
            .procs
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    cpu_seconds(&format!("/proc/{}/stat", p.child.id())),
                )
            })
            .collect();
        all.push(("load generator".to_owned(), cpu_seconds("/proc/self/stat")));
        all
    }
}

/// utime + stime of a /proc/PID/stat file, in seconds (Linux clock ticks are 1/100 s).
fn cpu_seconds(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = text.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; here, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}
