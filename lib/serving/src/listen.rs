//! Where a server listens: a socket the process inherited, or one it binds itself.
//!
//! Inherited sockets follow systemd's socket activation protocol (`LISTEN_FDS`, read with
//! the listenfd crate): a supervisor (systemd, or tandem's test kit) binds the ports and
//! hands them over, so it knows them before the process starts and no port is ever
//! chosen twice. Each binary documents which socket is which by position.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// The sockets this process was given at start.
pub struct Listeners(listenfd::ListenFd);

impl Listeners {
    pub fn from_env() -> Listeners {
        Listeners(listenfd::ListenFd::from_env())
    }

    /// The inherited socket at `index` if there is one, else a new listener on `addr`.
    pub async fn take_or_bind(
        &mut self,
        index: usize,
        addr: SocketAddr,
    ) -> std::io::Result<TcpListener> {
        match self.0.take_tcp_listener(index)? {
            Some(listener) => {
                listener.set_nonblocking(true)?;
                TcpListener::from_std(listener)
            }
            None => bind(addr).await,
        }
    }
}

/// Binds a listener, with an error that names the address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
