//! Ports for servers under test, chosen once and held for the test's whole life.
//!
//! A [`PortReservation`] binds a free port with `SO_REUSEPORT` and never listens on it:
//! the port is the test's, nobody else can bind it, and connecting to it is refused
//! while no server runs. Each time a server (in this process or a child process) starts,
//! it gets a fresh listening socket on the same port ([`PortReservation::listener`]), so
//! a service killed and restarted comes back at the address the others already know.
//! (The old way, asking the OS for a free port, closing it and hoping the server could
//! bind it before anyone else, was a race.)

use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Socket, Type};

pub struct PortReservation {
    addr: SocketAddr,
    /// Bound, never listening: it holds the port.
    _held: Socket,
}

fn reusable_socket() -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_port(true)?;
    Ok(socket)
}

impl PortReservation {
    /// A free port on 127.0.0.1.
    pub fn new() -> PortReservation {
        let socket = reusable_socket().expect("a TCP socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("a valid address");
        socket.bind(&any.into()).expect("a free port on 127.0.0.1");
        let addr = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("a bound address");
        PortReservation {
            addr,
            _held: socket,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new listening socket on the reserved port, for one run of a server.
    pub fn listener(&self) -> TcpListener {
        let socket = reusable_socket().expect("a TCP socket");
        socket
            .bind(&self.addr.into())
            .expect("the reserved port takes another listener");
        socket.listen(1024).expect("a listening socket");
        socket.into()
    }

    /// [`listener`](Self::listener) as a tokio listener, for a server in this process.
    pub fn tokio_listener(&self) -> tokio::net::TcpListener {
        let listener = self.listener();
        listener
            .set_nonblocking(true)
            .expect("a non-blocking socket");
        tokio::net::TcpListener::from_std(listener).expect("inside a tokio runtime")
    }
}

impl Default for PortReservation {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_port_refuses_until_served_and_is_nobody_elses() {
        let port = PortReservation::new();
        assert!(std::net::TcpStream::connect(port.addr()).is_err());
        assert!(
            std::net::TcpListener::bind(port.addr()).is_err(),
            "another socket took the reserved port"
        );
        let server = port.listener();
        assert!(std::net::TcpStream::connect(port.addr()).is_ok());
        drop(server);
        assert!(std::net::TcpStream::connect(port.addr()).is_err());
        let _again = port.listener();
        assert!(std::net::TcpStream::connect(port.addr()).is_ok());
    }
}
