//! Bind-before-publish listeners.

use std::net::{IpAddr, Ipv4Addr, TcpListener};

use chorus_bootstrap::listen::{advertise_ip, bind_listener_in_range, parse_port_range};
use chorus_bootstrap::BootstrapError;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Finds three consecutive ports that are free right now (outside Linux's ephemeral range, so
/// other tests' port-0 binds cannot grab them) and returns listeners holding all three.
fn three_free_ports() -> (u16, Vec<TcpListener>) {
    let seed = (std::process::id() % 500) as u16;
    for attempt in 0..200u16 {
        let lo = 20_000 + ((seed + attempt * 37) % 3000) * 3;
        let held: Vec<_> = (lo..lo + 3)
            .filter_map(|p| TcpListener::bind((LO, p)).ok())
            .collect();
        if held.len() == 3 {
            return (lo, held);
        }
    }
    panic!("no three consecutive free ports found");
}

#[test]
fn ephemeral_bind_reads_back_real_port() {
    let (l, addr) = bind_listener_in_range(LO, None).unwrap();
    assert_ne!(addr.port(), 0);
    assert_eq!(l.local_addr().unwrap(), addr);
    let (_l2, addr2) = bind_listener_in_range(LO, None).unwrap();
    assert_ne!(addr, addr2);
}

#[test]
fn narrow_range_skips_taken_ports_and_reports_exhaustion() {
    let (lo, mut held) = three_free_ports();
    let hi = lo + 2;
    // Keep `lo` taken by a foreign listener; free the other two.
    held.truncate(1);
    let (l1, a1) = bind_listener_in_range(LO, Some((lo, hi))).unwrap();
    let (l2, a2) = bind_listener_in_range(LO, Some((lo, hi))).unwrap();
    assert_ne!(a1, a2, "two live listeners never share an address");
    for a in [a1, a2] {
        assert!(
            a.port() > lo && a.port() <= hi,
            "{a} must skip the taken port {lo}"
        );
    }
    assert_eq!(l1.local_addr().unwrap(), a1);
    assert_eq!(l2.local_addr().unwrap(), a2);

    let err = bind_listener_in_range(LO, Some((lo, hi))).unwrap_err();
    assert!(
        matches!(err, BootstrapError::PortRangeExhausted { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&format!("{lo}-{hi}")), "{err}");

    // Freeing one port makes it available again.
    drop(l1);
    let (_l3, a3) = bind_listener_in_range(LO, Some((lo, hi))).unwrap();
    assert_eq!(a3, a1);
}

#[test]
fn port_range_parsing() {
    assert_eq!(parse_port_range("40000-40010").unwrap(), (40000, 40010));
    assert_eq!(parse_port_range(" 5 - 5 ").unwrap(), (5, 5));
    for bad in ["", "40000", "a-b", "10-5", "0-10", "1-70000"] {
        assert!(
            matches!(
                parse_port_range(bad),
                Err(BootstrapError::InvalidEnv { .. })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn advertise_loopback_master() {
    // CHORUS_SOCKET_IFADDR is not set in the test environment.
    if std::env::var("CHORUS_SOCKET_IFADDR").is_err() {
        assert_eq!(advertise_ip("127.0.0.1"), LO);
        assert_eq!(advertise_ip("localhost"), LO);
        // A non-loopback target gives some concrete (non-unspecified) address, never a panic.
        assert!(!advertise_ip("10.255.255.1").is_unspecified());
        assert_eq!(advertise_ip("no-such-host.invalid"), LO);
    }
}
