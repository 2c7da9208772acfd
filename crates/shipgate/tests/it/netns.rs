//! Separate hosts for the tests: network namespaces the test makes itself, joined by a bridge it
//! makes too, with the root namespace on the bridge through a veth of its own. Addresses are in
//! 169.254.0.0/16 and only on those veths; before anything is sent to a host, `ip route get`
//! must say the address leaves through the test's own veth (never the default route). Everything
//! is removed when the [`Hosts`] is dropped, on failure too.

use std::process::Command;

/// Runs `ip ARGS`, panicking with its output when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces of one test, with their addresses.
pub struct Hosts {
    tag: String,
    /// The root namespace's own address on the bridge.
    pub root_addr: String,
    /// Each host: its namespace's name and its address.
    pub hosts: Vec<(String, String)>,
}

impl Hosts {
    /// Makes `count` hosts (network namespaces) on a bridge of their own. Needs root.
    pub fn make(count: usize) -> Hosts {
        assert!((1..=50).contains(&count));
        // A /24 of 169.254.0.0/16 of this test process's own; the tag keeps names apart too.
        // Tests of one process run at once: each call gets its own subnet and names.
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nth = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let subnet = format!("169.254.{}", 100 + (pid * 7 + nth) % 150);
        // Two digits of the count: with one, the 11th set of hosts of a process took the names
        // of the 1st while it was still up ("File exists").
        let tag = format!("{:04}{:02}", pid % 10_000, nth % 100);
        let mut made = Hosts {
            tag: tag.clone(),
            root_addr: format!("{subnet}.1"),
            hosts: Vec::new(),
        };
        let bridge = made.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["link", "set", &bridge, "up"]);
        // The root namespace's own veth: its address on one end, the other on the bridge.
        let (root, root_port) = (format!("sgr{tag}"), format!("sgrb{tag}"));
        ip(&[
            "link", "add", &root, "type", "veth", "peer", "name", &root_port,
        ]);
        ip(&["link", "set", &root_port, "master", &bridge]);
        ip(&["link", "set", &root_port, "up"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", made.root_addr),
            "dev",
            &root,
        ]);
        ip(&["link", "set", &root, "up"]);
        for n in 1..=count {
            let ns = format!("sg{tag}h{n}");
            let addr = format!("{subnet}.{}", 10 + n);
            let (inside, port) = (format!("sgh{tag}{n}"), format!("sgp{tag}{n}"));
            ip(&["netns", "add", &ns]);
            made.hosts.push((ns.clone(), addr.clone()));
            ip(&[
                "link", "add", &inside, "type", "veth", "peer", "name", &port,
            ]);
            ip(&["link", "set", &port, "master", &bridge]);
            ip(&["link", "set", &port, "up"]);
            ip(&["link", "set", &inside, "netns", &ns]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &inside,
            ]);
            ip(&["-n", &ns, "link", "set", &inside, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        for (_, addr) in &made.hosts {
            made.assert_routed(addr);
        }
        made
    }

    fn bridge(&self) -> String {
        format!("sgb{}", self.tag)
    }

    /// Aborts unless `addr` leaves the root namespace through this test's own veth.
    pub fn assert_routed(&self, addr: &str) {
        let out = Command::new("ip")
            .args(["route", "get", addr])
            .output()
            .expect("running ip route get");
        let route = String::from_utf8_lossy(&out.stdout);
        let own = format!("dev sgr{} ", self.tag);
        assert!(
            out.status.success() && route.contains(&own),
            "{addr} would not leave through the test's own veth sgr{}: `{}`; refusing to send anything",
            self.tag,
            route.trim()
        );
    }

    /// Aborts unless `addr` leaves host `n`'s namespace through that host's own veth (how its
    /// agent reaches the server in the root namespace).
    pub fn assert_routed_from(&self, n: usize, addr: &str) {
        let (ns, _) = &self.hosts[n - 1];
        let out = Command::new("ip")
            .args(["-n", ns, "route", "get", addr])
            .output()
            .expect("running ip route get");
        let route = String::from_utf8_lossy(&out.stdout);
        let own = format!("dev sgh{}{n} ", self.tag);
        assert!(
            out.status.success() && route.contains(&own),
            "{addr} would not leave host {n} through its own veth: `{}`; refusing to send anything",
            route.trim()
        );
    }

    /// Cuts host `n` off the network (`up = false`) or plugs it back in, as a pulled cable
    /// would: its processes keep running.
    pub fn set_link(&self, n: usize, up: bool) {
        let (ns, _) = &self.hosts[n - 1];
        let dev = format!("sgh{}{n}", self.tag);
        ip(&[
            "-n",
            ns,
            "link",
            "set",
            &dev,
            if up { "up" } else { "down" },
        ]);
        if up {
            // Bringing a veth down drops its routes; the address's own route comes back with it.
            let (_, addr) = &self.hosts[n - 1];
            self.assert_routed(addr);
        }
    }

    /// A command run on host `n` (1-based) as on a machine of its own: in its network namespace,
    /// with the machine's `/sys` (its cgroups, which runc needs, and `ip netns exec` hides), and a
    /// `/run/runc` of its own (a mount namespace of the command's, gone with it), so that the
    /// runc containers of image instances, named by instance as on every host, do not meet
    /// another host's.
    pub fn command_as_machine(&self, n: usize, program: &std::path::Path) -> Command {
        let (ns, _) = &self.hosts[n - 1];
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}"))
            .args(["--", "unshare", "--mount", "--propagation", "private", "--"])
            .args([
                "sh",
                "-c",
                "mkdir -p /run/runc && mount -t tmpfs -o mode=0700 runc /run/runc && exec \"$@\"",
                "sh",
            ])
            .arg(program);
        c
    }

    /// A command run inside host `n`'s namespace (1-based).
    pub fn command_in(&self, n: usize, program: &std::path::Path) -> Command {
        let (ns, _) = &self.hosts[n - 1];
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and so its peer on the bridge.
        for (ns, _) in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("sgr{}", self.tag)])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .status();
    }
}
