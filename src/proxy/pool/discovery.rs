//! A pool's service discovery: every backend's host name resolved again each
//! `resolve_interval`; a name that does not resolve keeps its last addresses.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::Backend;
use pingora::Result;

use super::BackendIndex;
use crate::config::BackendConfig;

/// Resolves every backend's host; a name that does not resolve keeps its last addresses.
pub(super) struct PoolDiscovery {
    pub(super) name: String,
    pub(super) backends: Vec<BackendConfig>,
    pub(super) last: Mutex<Vec<Vec<SocketAddr>>>,
}

#[async_trait]
impl ServiceDiscovery for PoolDiscovery {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut resolved = Vec::with_capacity(self.backends.len());
        for (i, b) in self.backends.iter().enumerate() {
            let addrs = match b.host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, b.port)],
                Err(_) => match tokio::net::lookup_host((b.host.as_str(), b.port)).await {
                    Ok(a) => {
                        let mut a: Vec<SocketAddr> = a.collect();
                        a.sort();
                        a.dedup();
                        a
                    }
                    Err(e) => {
                        let last = self
                            .last
                            .lock()
                            .map(|l| l.get(i).cloned().unwrap_or_default())
                            .unwrap_or_default();
                        tracing::warn!(upstream = %self.name, backend = %b.url, error = %e, "backend host did not resolve; keeping its last addresses");
                        last
                    }
                },
            };
            resolved.push(addrs);
        }
        let mut set = BTreeSet::new();
        for (i, addrs) in resolved.iter().enumerate() {
            for a in addrs {
                let mut backend =
                    Backend::new_with_weight(&a.to_string(), self.backends[i].weight)?;
                backend.ext.insert(BackendIndex(i));
                set.insert(backend);
            }
        }
        if let Ok(mut last) = self.last.lock() {
            *last = resolved;
        }
        Ok((set, HashMap::new()))
    }
}
