//! An impaired link for tests: a network namespace the test makes itself, joined to the host by
//! a veth pair, with loss from an nftables rule inside it (this kernel has no netem). Removed
//! when dropped (the veth pair goes with its namespace). Traffic never leaves these two ends.
//!
//! Needs root and `ip` (iproute2) and `nft` (nftables): `scripts/test` installs nftables when it
//! runs as root.

use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Which way across the link a rule applies, seen from the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Into the namespace (its clients' downlink).
    In,
    /// Out of it (their uplink).
    Out,
}

impl Way {
    fn chain(self) -> &'static str {
        match self {
            Way::In => "input",
            Way::Out => "output",
        }
    }
}

pub struct Link {
    pub ns: String,
    /// The veth ends: the host's, and the namespace's.
    host_if: String,
    ns_if: String,
    /// The host's end: where a server for the namespace's clients listens.
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
}

fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} could not run ({e}): this test needs iproute2 and nftables")
        });
    assert!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl Link {
    /// A namespace on its own /30, reachable from the host at [`Link::host_ip`].
    pub fn new() -> Self {
        assert!(
            nix_is_root(),
            "network namespaces need root: run the tests as root (CI does)"
        );
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = (std::process::id() % 250) * 4 + n;
        let ns = format!("cv{}-{n}", std::process::id());
        let (host_if, ns_if) = (format!("cvh{tag}"), format!("cvn{tag}"));
        let subnet = [10, 77, (tag % 250) as u8, 0];
        let host_ip = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 1);
        let ns_ip = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 2);
        // A leftover of a killed run with the same name is removed first.
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        run("ip", &["netns", "add", &ns]);
        let link = Self {
            ns,
            host_if,
            ns_if,
            host_ip,
            ns_ip,
        };
        run(
            "ip",
            &[
                "link",
                "add",
                &link.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &link.ns_if,
                "netns",
                &link.ns,
            ],
        );
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{host_ip}/30"),
                "dev",
                &link.host_if,
            ],
        );
        run("ip", &["link", "set", &link.host_if, "up"]);
        run(
            "ip",
            &[
                "-n",
                &link.ns,
                "addr",
                "add",
                &format!("{ns_ip}/30"),
                "dev",
                &link.ns_if,
            ],
        );
        run("ip", &["-n", &link.ns, "link", "set", &link.ns_if, "up"]);
        run("ip", &["-n", &link.ns, "link", "set", "lo", "up"]);
        link
    }

    /// Drops `percent` % of the UDP datagrams crossing the link `way` whose first bytes are an
    /// RTP header of `payload_type` (the header stays clear under SRTP), counting them.
    pub fn drop_rtp(&self, way: Way, payload_type: u8, percent: u8) {
        let chain = way.chain();
        let rules = format!(
            "table inet impair {{\n  chain {chain} {{\n    type filter hook {chain} priority 0;\n    \
             meta l4proto udp @th,64,2 2 @th,73,7 {payload_type} numgen random mod 100 < {percent} \
             counter drop\n  }}\n}}\n"
        );
        self.load_rules(&rules);
    }

    /// Limits the link `way` to `kbit` kbit/s with a token bucket (tbf: 16 kbit burst, 200 ms
    /// of queue), replacing an earlier limit; `None` lifts it.
    pub fn limit_rate(&self, way: Way, kbit: Option<u32>) {
        let mut command: Vec<String> = match way {
            Way::In => vec![],
            Way::Out => ["netns", "exec", &self.ns, "tc"].map(String::from).to_vec(),
        };
        let device = match way {
            Way::In => &self.host_if,
            Way::Out => &self.ns_if,
        };
        let program = if way == Way::In { "tc" } else { "ip" };
        match kbit {
            Some(kbit) => command.extend(
                [
                    "qdisc",
                    "replace",
                    "dev",
                    device,
                    "root",
                    "tbf",
                    "rate",
                    &format!("{kbit}kbit"),
                    "burst",
                    "16kbit",
                    "latency",
                    "200ms",
                ]
                .map(String::from),
            ),
            None => command.extend(["qdisc", "del", "dev", device, "root"].map(String::from)),
        }
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        run(program, &args);
    }

    /// Drops `percent` % of every UDP datagram crossing the link `way` (media, RTCP, STUN alike),
    /// counting them; 100 drops all of them (a firewall that lets no UDP through).
    pub fn drop_udp(&self, way: Way, percent: u8) {
        let which = if percent >= 100 {
            String::new()
        } else {
            format!("numgen random mod 100 < {percent} ")
        };
        self.load_rules(&format!(
            "table inet impair {{\n  chain {chain} {{\n    type filter hook {chain} priority 0;\n    \
             meta l4proto udp {which}counter drop\n  }}\n}}\n",
            chain = way.chain()
        ));
    }

    fn load_rules(&self, rules: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft runs");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .expect("rules written");
        let output = child.wait_with_output().expect("nft finishes");
        assert!(
            output.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A program that runs `program` inside the namespace with the arguments it is given (a
    /// shell script in the system's temporary directory, removed with the link): for tools
    /// that take an executable path, such as a browser driver.
    pub fn wrapper(&self, program: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path =
            std::env::temp_dir().join(format!("{}-{}.sh", self.ns, program.replace('/', "_")));
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nexec ip netns exec {} {program} \"$@\"\n",
                self.ns
            ),
        )
        .expect("wrapper written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// Datagrams the loss rule of `way` dropped so far.
    pub fn dropped(&self, way: Way) -> u64 {
        let output = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns,
                "nft",
                "list",
                "chain",
                "inet",
                "impair",
                way.chain(),
            ],
        );
        let text = String::from_utf8_lossy(&output.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Runs `program` inside the namespace and waits for it.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", &self.ns, program];
        all.extend_from_slice(args);
        Command::new("ip")
            .args(&all)
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec runs")
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{}-", self.ns))
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
