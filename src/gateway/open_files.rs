//! The process's open-files limit against `http.max_connections`.
//!
//! Every connection is a file descriptor. Many systems start processes
//! with a soft limit of 1,024 while allowing far more (the hard limit), so
//! a gateway configured for 12,000 connections would begin refusing at
//! about 1,000 with `EMFILE`. Like Go's runtime and nginx's
//! `worker_rlimit_nofile`, the gateway raises its soft limit to the hard
//! one at start; when even that is below what the configuration allows, it
//! says so once, at start, instead of failing accepts under load.

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tracing::{info, warn};

/// Descriptors kept for what is not a client connection: Kafka sockets
/// (the tails, history readers, metadata), the listeners, logs.
const RESERVED: u64 = 256;

/// Raises the soft limit to the hard limit and warns if the result cannot
/// hold `max_connections` plus [`RESERVED`]. Returns the limit in force.
pub fn raise_for(max_connections: usize) -> Option<u64> {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            warn!(error = %e, "cannot read the open-files limit");
            return None;
        }
    };
    let mut limit = soft;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                info!(from = soft, to = hard, "raised the open-files limit");
                limit = hard;
            }
            Err(e) => warn!(error = %e, soft, hard, "cannot raise the open-files limit"),
        }
    }
    let needed = max_connections as u64 + RESERVED;
    if limit < needed {
        warn!(
            limit,
            max_connections,
            "the open-files limit is below http.max_connections + {RESERVED}: connections \
             beyond about {} will fail to be accepted; raise the limit (ulimit -n, \
             LimitNOFILE=, or the container runtime's nofile) or lower http.max_connections",
            limit.saturating_sub(RESERVED)
        );
    }
    Some(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        assert_eq!(raise_for(10), Some(hard));
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        assert_eq!(soft, hard);
    }
}
