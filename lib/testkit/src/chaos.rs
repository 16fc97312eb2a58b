//! A TCP proxy that can misbehave on command: tests put it between a process and
//! RabbitMQ (or any server) to make that server vanish, or fall silent, for them alone,
//! without touching the real one, which other tests share.

use std::net::SocketAddr;

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Up,
    /// Every connection is closed and new ones are dropped: the server is gone.
    Cut,
    /// Connections stay open but nothing passes either way: a server that stopped
    /// answering (a hung broker, a network partition without resets).
    Silent,
}

pub struct ChaosProxy {
    pub addr: SocketAddr,
    line: watch::Sender<Line>,
    task: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    /// Listens on a free local port and forwards to `target` while up.
    pub async fn start(target: SocketAddr) -> ChaosProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let addr = listener.local_addr().expect("a bound address");
        let (line, watch) = watch::channel(Line::Up);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let mut state = watch.clone();
                let now = *state.borrow();
                match now {
                    Line::Cut => continue, // the connection is dropped at once
                    Line::Silent => {
                        // Held open, never answered, until the line changes.
                        tokio::spawn(async move {
                            let _ = state.changed().await;
                            drop(client);
                        });
                        continue;
                    }
                    Line::Up => {}
                }
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let line = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                        changed = state.wait_for(|line| *line != Line::Up) => {
                            changed.map(|line| *line).unwrap_or(Line::Cut)
                        }
                    };
                    // Cut: both sockets close now. Silent: they stay open, carrying
                    // nothing, until the line changes again; then they close.
                    if line == Line::Silent {
                        let _ = state.changed().await;
                    }
                });
            }
        });
        ChaosProxy { addr, line, task }
    }

    /// Cuts every connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        let _ = self.line.send(Line::Cut);
    }

    /// Keeps every connection open but passes nothing, until [`restore`](Self::restore)
    /// (which then closes them, as a recovered network would reset them).
    pub fn silence(&self) {
        let _ = self.line.send(Line::Silent);
    }

    pub fn restore(&self) {
        let _ = self.line.send(Line::Up);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.line.send(Line::Cut);
    }
}
