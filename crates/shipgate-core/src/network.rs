//! What an environment's processes may reach on the network: the rule behind the fence the
//! data plane puts around them. A process of an environment (an instance, a verify test, a
//! fact, an experiment's process) may connect, on its own machine, only to its environment's
//! router, its dependency proxies, shipgate's API (for OFREP) and what `network.allow` names;
//! to other machines unless `network.egress = "none"`. Never to another environment's
//! instances or proxies, the Toxiproxy API or an agent's port.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use crate::config::{Config, EnvironmentConfig};

/// `network.egress` and `network.allow` of an environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRules {
    /// False with `network.egress = "none"`: nothing beyond this machine.
    pub closed: bool,
    /// `network.allow`: other addresses on this machine its processes may connect to (a
    /// database on `127.0.0.1:5432` that is not behind a dependency proxy).
    pub allow: Vec<SocketAddr>,
}

impl NetworkRules {
    /// Parses `network.egress`.
    pub fn parse_egress(s: &str) -> Result<bool, String> {
        match s {
            "open" => Ok(false),
            "none" => Ok(true),
            other => Err(format!(
                "network.egress is \"open\" (the default: other machines are reached) or \"none\", not \"{other}\""
            )),
        }
    }
}

/// The ports on its own machine that the processes of `env` may connect to: its router, its
/// dependency proxies, the API at `api` (OFREP) and `network.allow`. Their own instances' ports
/// are added by the data plane as it starts them.
pub fn local_ports(config: &Config, env: &EnvironmentConfig, api: SocketAddr) -> BTreeSet<u16> {
    let mut ports = BTreeSet::from([env.listen.port(), api.port()]);
    ports.extend(env.front.map(|f| f.port()));
    ports.extend(env.dependencies.iter().map(|d| d.listen.port()));
    ports.extend(env.network.allow.iter().map(SocketAddr::port));
    // The Toxiproxy API and the agents' port are never an environment's, whatever it allows.
    ports.remove(&config.server.toxiproxy_listen.port());
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_environment_reaches_its_router_its_proxies_the_api_and_what_it_allows_only() {
        let config = Config::parse(
            "[server]\nlisten = \"127.0.0.1:7300\"\ntoxiproxy_listen = \"127.0.0.1:8474\"\n\
             [apps.web]\nrun = \"./web\"\n\
             [environments.staging]\nlisten = \"127.0.0.1:8103\"\n\
             network = { allow = [\"127.0.0.1:5432\", \"127.0.0.1:8474\"] }\n\
             dependencies.db = { listen = \"127.0.0.1:6543\", upstream = \"127.0.0.1:5432\" }\n\
             [environments.production]\nafter = \"staging\"\nlisten = \"127.0.0.1:8104\"\n\
             network = { egress = \"none\" }\n",
            std::path::Path::new("/srv"),
        )
        .unwrap();
        let staging = &config.environments[0];
        let api = config.server.listen;
        assert_eq!(
            local_ports(&config, staging, api),
            BTreeSet::from([5432, 6543, 7300, 8103])
        );
        assert!(!staging.network.closed);
        let production = &config.environments[1];
        assert_eq!(
            local_ports(&config, production, api),
            BTreeSet::from([7300, 8104])
        );
        assert!(production.network.closed);
    }

    #[test]
    fn egress_is_open_or_none() {
        assert_eq!(NetworkRules::parse_egress("none"), Ok(true));
        assert_eq!(NetworkRules::parse_egress("open"), Ok(false));
        assert!(
            NetworkRules::parse_egress("closed")
                .unwrap_err()
                .contains("\"open\"")
        );
    }
}
