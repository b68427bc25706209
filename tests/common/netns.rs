//! Real network partitions: a network namespace joined to the host by a
//! veth pair, each end with its own address, and a cut that drops every
//! packet both ways (silently, as a dead link or a firewall would) until
//! healed. Needs root (`ip`, `iptables`); fails loudly without.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A namespace at `ns_ip`, reached from the host at `host_ip`.
pub struct Netns {
    pub name: String,
    host_if: String,
    ns_if: String,
    /// The host's end of the link (its own address, on the host).
    pub host_ip: String,
    /// The namespace's address.
    pub ns_ip: String,
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?} (root and iproute2 needed): {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// A new namespace with its link up, on a /30 of 10.201.0.0/16 of its
    /// own (chosen by process and count, so that test binaries running at
    /// once do not meet).
    pub fn new() -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = (std::process::id() * 8 + COUNT.fetch_add(1, Ordering::Relaxed)) % 16_384;
        let (third, fourth) = (n / 64, (n % 64) * 4);
        let ns = Netns {
            name: format!("cube-{n}"),
            host_if: format!("cvh{n}"),
            ns_if: format!("cvn{n}"),
            host_ip: format!("10.201.{third}.{}", fourth + 1),
            ns_ip: format!("10.201.{third}.{}", fourth + 2),
        };
        // Left over from a run that was killed: gone first.
        ns.remove();
        run(&["ip", "netns", "add", &ns.name]);
        run(&[
            "ip",
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
        ]);
        run(&["ip", "link", "set", &ns.ns_if, "netns", &ns.name]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        run(&["ip", "link", "set", &ns.host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["ip", "-n", &ns.name];
            all.extend_from_slice(args);
            run(&all);
        };
        inside(&["addr", "add", &format!("{}/30", ns.ns_ip), "dev", &ns.ns_if]);
        inside(&["link", "set", &ns.ns_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }

    /// The command line prefix that runs a program inside.
    pub fn exec(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .map(str::to_string)
            .to_vec()
    }

    /// Drops every packet over the link, both ways, until `heal`.
    pub fn cut(&self) {
        run(&["iptables", "-I", "INPUT", "-i", &self.host_if, "-j", "DROP"]);
        run(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "iptables",
            "-I",
            "INPUT",
            "-i",
            &self.ns_if,
            "-j",
            "DROP",
        ]);
    }

    pub fn heal(&self) {
        run(&["iptables", "-D", "INPUT", "-i", &self.host_if, "-j", "DROP"]);
        run(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "iptables",
            "-D",
            "INPUT",
            "-i",
            &self.ns_if,
            "-j",
            "DROP",
        ]);
    }

    fn remove(&self) {
        // The host's rule, if cut; the namespace (its rules with it); the
        // host's end of the link now, not when the kernel gets to it.
        while Command::new("iptables")
            .args(["-D", "INPUT", "-i", &self.host_if, "-j", "DROP"])
            .output()
            .is_ok_and(|o| o.status.success())
        {}
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}
