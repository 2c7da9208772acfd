//! Listening sockets handed from one process of the data plane to the next: the server keeps a
//! handle to each router's socket while the agent runs, and gives them to the agent it starts
//! after one died, so connections wait in the sockets' queues meanwhile instead of being
//! refused. Sent over a Unix socket as one message: the addresses (JSON) and the sockets
//! (`SCM_RIGHTS`).

use std::io::{IoSlice, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The most sockets one message carries (the kernel takes at most 253).
pub const MOST: usize = 128;

/// Sends `listeners` (at most [`MOST`]) over `stream`.
pub fn send(stream: &UnixStream, listeners: &[(SocketAddr, TcpListener)]) -> std::io::Result<()> {
    let listeners = &listeners[..listeners.len().min(MOST)];
    let addrs: Vec<String> = listeners.iter().map(|(a, _)| a.to_string()).collect();
    let json = serde_json::to_vec(&addrs).map_err(std::io::Error::other)?;
    let mut message = u32::try_from(json.len())
        .map_err(std::io::Error::other)?
        .to_be_bytes()
        .to_vec();
    message.extend(json);
    let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|(_, l)| l.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MOST))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("too many sockets for one message"));
    }
    let mut sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&message)],
        &mut control,
        SendFlags::empty(),
    )?;
    while sent < message.len() {
        sent += rustix::net::send(stream, &message[sent..], SendFlags::empty())?;
    }
    Ok(())
}

/// Receives what [`send`] sent.
pub fn receive(stream: &UnixStream) -> std::io::Result<Vec<(SocketAddr, TcpListener)>> {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MOST))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut buffer)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut sockets = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            sockets.extend(fds.map(TcpListener::from));
        }
    }
    let mut read = got.bytes;
    let mut reader = stream;
    while read < 4 {
        read += reader.read(&mut buffer[read..])?;
    }
    let length = u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) as usize;
    if 4 + length > buffer.len() {
        return Err(std::io::Error::other(
            "the handed-over addresses do not fit",
        ));
    }
    while read < 4 + length {
        let n = reader.read(&mut buffer[read..4 + length])?;
        if n == 0 {
            return Err(std::io::Error::other("the hand-over was cut short"));
        }
        read += n;
    }
    let addrs: Vec<String> =
        serde_json::from_slice(&buffer[4..4 + length]).map_err(std::io::Error::other)?;
    Ok(addrs
        .iter()
        .filter_map(|a| a.parse().ok())
        .zip(sockets)
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_cross_with_their_addresses_and_keep_their_queue() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let (at_a, at_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        send(&ours, &[(at_a, a), (at_b, b)]).unwrap();
        // Both sockets are only on the way now: a connection waits in the queue.
        let waiting = std::net::TcpStream::connect(at_a).unwrap();
        let got = receive(&theirs).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0, got[1].0), (at_a, at_b));
        let (accepted, peer) = got[0].1.accept().unwrap();
        assert_eq!(peer, waiting.local_addr().unwrap());
        drop(accepted);
    }
}
