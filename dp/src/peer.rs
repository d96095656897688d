//! Which local user a loopback TCP connection comes from (Linux).
//!
//! The relay listens on loopback TCP, not a Unix socket, because grpcio
//! (gRPC C-core) sends the percent-encoded socket path as the HTTP/2
//! `:authority` of a `unix:` target, which Rust's HTTP/2 server refuses as a
//! malformed authority. To keep the relay as private as a socket file, it
//! serves only connections of allowed users: the kernel lists every TCP
//! socket with its owner's uid in `/proc/net/tcp` and `/proc/net/tcp6`, and
//! the connecting socket is the one whose local address is the peer's and
//! whose remote address is the relay's. Anything unclear refuses the
//! connection (fail closed).

use std::net::{IpAddr, SocketAddr};

/// The uid owning the socket at `peer` connected to `local`, from the text
/// of `/proc/net/tcp` (or `tcp6`); `None` when no line matches.
pub fn uid_in(table: &str, local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let want_local = encode(peer)?;
    let want_remote = encode(local)?;
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid ...
        if cols.len() > 7 && cols[1].eq_ignore_ascii_case(&want_local) && cols[2].eq_ignore_ascii_case(&want_remote) {
            cols[7].parse().ok()
        } else {
            None
        }
    })
}

/// An address as the kernel prints it: the address in host byte order per
/// 32-bit word, in hex, then `:` and the port in hex.
fn encode(addr: SocketAddr) -> Option<String> {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => format!("{:08X}", u32::from_ne_bytes(v4.octets())),
        IpAddr::V6(v6) => v6
            .octets()
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect(),
    };
    Some(format!("{ip}:{:04X}", addr.port()))
}

/// The uid of the process that opened the connection from `peer` to
/// `local`, from the kernel's socket tables. A client on a dual-stack IPv6
/// socket (gRPC C-core's) reaching an IPv4 listener is listed in `tcp6`
/// with IPv4-mapped addresses.
pub fn uid_of(local: SocketAddr, peer: SocketAddr) -> std::io::Result<Option<u32>> {
    let mapped = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    };
    if local.is_ipv4() {
        let v4 = std::fs::read_to_string("/proc/net/tcp")?;
        if let Some(uid) = uid_in(&v4, local, peer) {
            return Ok(Some(uid));
        }
    }
    let v6 = std::fs::read_to_string("/proc/net/tcp6")?;
    Ok(uid_in(&v6, mapped(local), mapped(peer)).or_else(|| uid_in(&v6, local, peer)))
}

/// This process's uid.
pub fn own_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_connecting_socket() {
        // 127.0.0.1:40000 → 127.0.0.1:8080, owned by 1000; and the accepted
        // side, owned by 0.
        let table =
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0 20 4 30 10 -1\n\
   2: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1\n";
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(uid_in(table, local, peer), Some(1000));
        assert_eq!(uid_in(table, local, "127.0.0.1:40001".parse().unwrap()), None);
        assert_eq!(uid_in("", local, peer), None);
    }

    #[test]
    fn a_dual_stack_client_is_found_by_its_mapped_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let mapped = SocketAddr::new(IpAddr::V6(std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped()), local.port());
        // An AF_INET6 socket connecting to ::ffff:127.0.0.1, as C-core does.
        let _client = std::net::TcpStream::connect(mapped).unwrap();
        let (_conn, peer) = listener.accept().unwrap();
        assert_eq!(uid_of(local, peer).unwrap(), Some(own_uid()));
    }

    #[test]
    fn a_real_loopback_connection_is_ours() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(local).unwrap();
        let (_conn, peer) = listener.accept().unwrap();
        assert_eq!(uid_of(local, peer).unwrap(), Some(own_uid()));
    }
}
