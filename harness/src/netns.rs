//! Separate network stacks for multi-host tests: Linux network namespaces
//! joined by veth pairs to a bridge in a hub namespace, on a private /24
//! that exists only inside them.
//!
//! A [`Lan`] creates its namespaces with names unique to this process and
//! removes every one of them when dropped (which also removes their veth
//! ends and bridge), so a failed test leaves nothing behind. Programs run
//! inside a namespace through `ip netns exec`; nothing reaches the host's
//! own interfaces. Needs root (CAP_SYS_ADMIN) and `ip`: [`Lan::new`] says
//! why when it cannot, so a test can skip with that reason.

use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Source of unique names within this process.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A namespace of a [`Lan`]: its name and its address on the LAN.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// A hub namespace with a bridge, and the namespaces linked to it.
pub struct Lan {
    tag: String,
    /// Every namespace created, the hub first; removed on drop.
    namespaces: Vec<String>,
    hub: String,
    next_host: u8,
    next_link: u32,
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    check(&out, args)
}

fn check(out: &Output, args: &[&str]) -> Result<(), String> {
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lan {
    /// A LAN 10.77.0.0/24 in a new hub namespace; `Err` says why namespaces
    /// cannot be made here (not root, no `ip`).
    pub fn new() -> Result<Lan, String> {
        let tag = format!(
            "zk{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let hub = format!("{tag}h");
        ip(&["netns", "add", &hub])?;
        let lan = Lan {
            tag,
            namespaces: vec![hub.clone()],
            hub,
            next_host: 1,
            next_link: 0,
        };
        ip(&["-n", &lan.hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lan.hub, "link", "set", "br0", "up"])?;
        Ok(lan)
    }

    fn new_namespace(&mut self) -> Result<String, String> {
        let ns = format!("{}n{}", self.tag, self.namespaces.len());
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A veth pair with one end `a_name` in `a`, the other `b_name` in `b`.
    fn veth(&mut self, a: &str, a_name: &str, b: &str, b_name: &str) -> Result<(), String> {
        self.next_link += 1;
        // Created in this namespace under unique names, then moved.
        let (ta, tb) = (
            format!("{}a{}", self.tag, self.next_link),
            format!("{}b{}", self.tag, self.next_link),
        );
        ip(&["link", "add", &ta, "type", "veth", "peer", "name", &tb])?;
        ip(&["link", "set", &ta, "netns", a])?;
        ip(&["link", "set", &tb, "netns", b])?;
        ip(&["-n", a, "link", "set", &ta, "name", a_name])?;
        ip(&["-n", b, "link", "set", &tb, "name", b_name])?;
        Ok(())
    }

    /// A new namespace on the LAN, at the next address.
    pub fn add_host(&mut self) -> Result<Host, String> {
        let ns = self.new_namespace()?;
        let port = format!("p{}", self.next_link + 1);
        let hub = self.hub.clone();
        self.veth(&hub, &port, &ns, "eth0")?;
        ip(&["-n", &self.hub, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", &self.hub, "link", "set", &port, "up"])?;
        let addr = Ipv4Addr::new(10, 77, 0, self.next_host);
        self.next_host += 1;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        Ok(Host { ns, ip: addr })
    }

    /// A new namespace whose only link is to `gateway`, on a /30 of its own:
    /// it reaches `gateway` (at its LAN address too) and nothing else, and
    /// nothing else reaches it (namespaces do not forward).
    pub fn add_behind(&mut self, gateway: &Host) -> Result<(Host, Ipv4Addr), String> {
        let ns = self.new_namespace()?;
        let n = self.next_link as u8 + 1;
        let inner = format!("in{n}");
        self.veth(&gateway.ns, &inner, &ns, "eth0")?;
        let gw = Ipv4Addr::new(10, 78, n, 1);
        let addr = Ipv4Addr::new(10, 78, n, 2);
        ip(&[
            "-n",
            &gateway.ns,
            "addr",
            "add",
            &format!("{gw}/30"),
            "dev",
            &inner,
        ])?;
        ip(&["-n", &gateway.ns, "link", "set", &inner, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        // The LAN is routed through the gateway, which does not forward:
        // only the gateway's own LAN address answers.
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "10.77.0.0/24",
            "via",
            &gw.to_string(),
        ])?;
        Ok((Host { ns, ip: addr }, gw))
    }

    /// Limits what `host` sends to `kbit` kbit/s with a token bucket.
    pub fn rate_limit(&self, host: &Host, kbit: u32) -> Result<(), String> {
        let args = [
            "netns",
            "exec",
            &host.ns,
            "tc",
            "qdisc",
            "add",
            "dev",
            "eth0",
            "root",
            "tbf",
            "rate",
            &format!("{kbit}kbit"),
            "burst",
            "32kbit",
            "latency",
            "400ms",
        ];
        ip(&args)
    }

    /// Bytes `host`'s LAN interface received and sent so far.
    pub fn counters(&self, host: &Host) -> Result<(u64, u64), String> {
        let read = |which: &str| -> Result<u64, String> {
            let path = format!("/sys/class/net/eth0/statistics/{which}_bytes");
            let out = Command::new("ip")
                .args(["netns", "exec", &host.ns, "cat", &path])
                .output()
                .map_err(|e| e.to_string())?;
            check(&out, &["netns", "exec", &host.ns, "cat", &path])?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|e| format!("{path}: {e}"))
        };
        Ok((read("rx")?, read("tx")?))
    }

    /// A command that runs `program` inside `host`'s namespace, killed if
    /// this process dies.
    pub fn command(&self, host: &Host, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = crate::children::command("ip");
        cmd.args(["netns", "exec", &host.ns]).arg(program);
        cmd
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("removing namespace {ns}: {e}");
            }
        }
    }
}
