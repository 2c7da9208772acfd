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

/// Whether `url`, which shipgate itself calls on behalf of a process of `env` (an experiment's
/// HTTP probe or action), is within that environment's reach: on this machine (loopback) only
/// a port of [`local_ports`], elsewhere only with egress open. The refusal says why.
pub fn may_reach_url(
    config: &Config,
    env: &EnvironmentConfig,
    api: SocketAddr,
    url: &str,
) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("`{url}` is not an http:// or https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().ok()),
        _ => (authority, None),
    };
    let port = port.unwrap_or(if scheme == "https" { 443 } else { 80 });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let local = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
    if local {
        if local_ports(config, env, api).contains(&port) {
            return Ok(());
        }
        return Err(format!(
            "{host}:{port} is not within the reach of environment `{}` (on this machine it reaches its router, its dependency proxies, the API and `network.allow`)",
            env.name
        ));
    }
    if env.network.closed {
        return Err(format!(
            "environment `{}` has network.egress = \"none\": {host}:{port} is beyond its reach",
            env.name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipgate_calls_for_an_environment_only_what_it_could_reach_itself() {
        let config = Config::parse(
            "[server]\nlisten = \"127.0.0.1:7300\"\n\
             [apps.web]\nrun = \"./web\"\n\
             [environments.staging]\nlisten = \"127.0.0.1:8103\"\nnetwork = { egress = \"none\" }\n",
            std::path::Path::new("/srv"),
        )
        .unwrap();
        let staging = &config.environments[0];
        let api = config.server.listen;
        let reach = |url: &str| may_reach_url(&config, staging, api, url);
        assert_eq!(reach("http://127.0.0.1:8103/db"), Ok(()));
        assert_eq!(reach("http://localhost:7300/api/v1/chaos"), Ok(()));
        assert_eq!(reach("http://user:pw@[::1]:8103/"), Ok(()));
        for beyond in [
            "http://127.0.0.1:8104/",
            "http://127.0.0.2:8474/proxies",
            "http://0.0.0.0:22/",
            "http://localhost/",
            "https://example.com/",
        ] {
            assert!(reach(beyond).is_err(), "{beyond}");
        }
        assert!(reach("ftp:/x").is_err());
    }

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
