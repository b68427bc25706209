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
    /// own: the first number free from one chosen by process and count
    /// (taken when the namespace's name is: test binaries running at once,
    /// or one killed before it cleaned up, keep theirs).
    pub fn new() -> Self {
        const SLOTS: u32 = 16_384;
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let first = std::process::id()
            .wrapping_mul(8)
            .wrapping_add(COUNT.fetch_add(1, Ordering::Relaxed));
        let ns = (0..SLOTS)
            .map(|step| Self::numbered(first.wrapping_add(step) % SLOTS))
            .find(|ns| {
                Command::new("ip")
                    .args(["netns", "add", &ns.name])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect("a free network namespace (root and iproute2 needed)");
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

    fn numbered(n: u32) -> Self {
        let (third, fourth) = (n / 64, (n % 64) * 4);
        Netns {
            name: format!("cube-{n}"),
            host_if: format!("cvh{n}"),
            ns_if: format!("cvn{n}"),
            host_ip: format!("10.201.{third}.{}", fourth + 1),
            ns_ip: format!("10.201.{third}.{}", fourth + 2),
        }
    }

    /// The command line prefix that runs a program inside.
    pub fn exec(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .map(str::to_string)
            .to_vec()
    }

    /// Drops every packet over the link, both ways, until `heal`.
    pub fn cut(&self) {
        self.drop_rules("-I");
    }

    pub fn heal(&self) {
        self.drop_rules("-D");
    }

    /// Inserts (`-I`) or deletes (`-D`) the rule at each end of the link
    /// that drops what comes in over it.
    fn drop_rules(&self, action: &str) {
        // -w: wait for the lock (the engine changes rules too).
        run(&[
            "iptables",
            "-w",
            action,
            "INPUT",
            "-i",
            &self.host_if,
            "-j",
            "DROP",
        ]);
        let inside = ["ip", "netns", "exec", &self.name, "iptables", "-w", action];
        run(&[&inside[..], &["INPUT", "-i", &self.ns_if, "-j", "DROP"]].concat());
    }

    fn remove(&self) {
        // The host's rule, if cut; the namespace (its rules with it); the
        // host's end of the link now, not when the kernel gets to it.
        while Command::new("iptables")
            .args(["-w", "-D", "INPUT", "-i", &self.host_if, "-j", "DROP"])
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
