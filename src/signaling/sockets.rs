//! Open WebSockets, counted overall and per client address, so neither one client nor many can
//! hold an unbounded number of sockets (each is a task, buffers and a descriptor). A slot is
//! taken before the upgrade and given back when the socket's task ends.
//!
//! A std mutex guards the counts: held only to change a number, never across an await.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Sockets {
    counts: Arc<Mutex<Counts>>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Only addresses with a socket open: an entry goes with its last socket.
    by_address: HashMap<IpAddr, usize>,
}

/// Why a socket was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `ws_max_connections` sockets are open.
    ServerFull,
    /// `ws_max_connections_per_address` sockets are open from this address.
    AddressFull,
}

/// One open socket's place in the counts; dropping it frees the place.
pub struct Slot {
    sockets: Sockets,
    address: IpAddr,
}

impl Sockets {
    pub fn open(
        &self,
        address: IpAddr,
        max_total: usize,
        max_per_address: usize,
    ) -> Result<Slot, Refused> {
        let mut counts = self.lock();
        if counts.total >= max_total {
            return Err(Refused::ServerFull);
        }
        let from_address = counts.by_address.entry(address).or_default();
        if *from_address >= max_per_address {
            if *from_address == 0 {
                counts.by_address.remove(&address);
            }
            return Err(Refused::AddressFull);
        }
        *from_address += 1;
        counts.total += 1;
        Ok(Slot {
            sockets: self.clone(),
            address,
        })
    }

    /// Sockets open now, and the addresses they come from.
    pub fn open_now(&self) -> (usize, usize) {
        let counts = self.lock();
        (counts.total, counts.by_address.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.sockets.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_address.get_mut(&self.address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_address_and_overall_and_forgets_closed_addresses() {
        let sockets = Sockets::default();
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let first = sockets.open(a, 3, 2).unwrap();
        let second = sockets.open(a, 3, 2).unwrap();
        assert_eq!(sockets.open(a, 3, 2).err(), Some(Refused::AddressFull));
        let third = sockets.open(b, 3, 2).unwrap();
        assert_eq!(sockets.open(b, 3, 2).err(), Some(Refused::ServerFull));
        assert_eq!(sockets.open_now(), (3, 2));
        drop((first, second, third));
        assert_eq!(sockets.open_now(), (0, 0));
    }
}
