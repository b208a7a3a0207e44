//! rdma wire format: immediate encoding, handshake records (round trips, magic/version/kind
//! checks, truncated input), device/GID selection, and registration by allocation base.
use chorus_backend::memory::{Location, Registration, Registry};
use chorus_backend::transport::rdma::mr::{MrCache, Registrar};
use chorus_backend::transport::rdma::select::{choose_gid, HcaFilter};
use chorus_backend::transport::rdma::wire::{self, widen, widen_forward, CapRecord, EndpointInfo, Imm, PortCap, WireError};
use std::sync::atomic::{AtomicUsize, Ordering};

#[test]
fn immediate_layout_is_bit_exact() {
    assert_eq!(Imm::data(0, 5).encode(), 5);
    assert_eq!(Imm::data(1, 5).encode(), (1 << 29) | 5);
    assert_eq!(Imm::ack(1, 7).encode(), (1 << 30) | (1 << 29) | 7);
    assert_eq!(Imm::Abort { code: 3 }.encode(), (2 << 30) | 3);
    assert_eq!(Imm::control(2, 9).encode(), (3u32 << 30) | (2 << 28) | 9);
    // Sequence numbers are carried mod 2^29.
    assert_eq!(Imm::data(0, (1 << 29) + 4).encode(), 4);
    // Network byte order on the wire.
    assert_eq!(Imm::data(1, 5).encode().to_be_bytes(), [0x20, 0, 0, 5]);
}

#[test]
fn immediates_round_trip_and_reserved_encodings_are_rejected() {
    for stream in 0..2u8 {
        for v in [0u64, 1, 4095, (1 << 29) - 1, 1 << 29, u64::MAX] {
            let d = Imm::data(stream, v);
            assert_eq!(Imm::decode(d.encode()).unwrap(), d);
            let a = Imm::ack(stream, v);
            assert_eq!(Imm::decode(a.encode()).unwrap(), a);
        }
    }
    for id in 0..3u8 {
        let c = Imm::control(id, 123_456);
        assert_eq!(Imm::decode(c.encode()).unwrap(), c);
    }
    assert_eq!(Imm::decode(Imm::Abort { code: 77 }.encode()).unwrap(), Imm::Abort { code: 77 });
    assert!(matches!(Imm::decode((3u32 << 30) | (3 << 28)), Err(WireError::BadImmediate { kind: 3, .. })));
    assert!(matches!(Imm::decode((2u32 << 30) | (1 << 29)), Err(WireError::BadImmediate { kind: 2, .. })));
}

#[test]
fn truncated_values_widen_back_to_64_bits() {
    let span = 1u64 << 29;
    for near in [0u64, 3, span - 2, span, 5 * span + 17, u64::MAX / 4] {
        for delta in [0i64, 1, 3, -1, -3] {
            let v = (near as i64 + delta).max(0) as u64;
            assert_eq!(widen(near, (v & (span - 1)) as u32), v, "near {near} v {v}");
        }
    }
    assert_eq!(widen_forward(10, 12, 28), 12);
    assert_eq!(widen_forward((1 << 28) - 1, 2, 28), (1 << 28) + 2);
    assert_eq!(widen_forward(5, 5, 28), 5);
}

fn endpoint() -> EndpointInfo {
    EndpointInfo {
        from: 3,
        to: 1,
        epoch: 2,
        qpn: 0x1234,
        psn: 0xabcdef,
        lid: 7,
        gid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 3],
        link_layer: 2,
        active_mtu: 5,
        slots: 4,
        slot_bytes: 512 * 1024,
        rings_addr: 0x7f00_dead_0000,
        rings_rkey: 0x42,
        streams: 2,
        signals_addr: 0x7f00_beef_0000,
        signals_rkey: 0x43,
    }
}

#[test]
fn handshake_records_round_trip() {
    let e = endpoint();
    let b = e.encode();
    assert_eq!(&b[..4], b"CHRD");
    assert_eq!(u16::from_le_bytes([b[4], b[5]]), wire::VERSION);
    assert_eq!(EndpointInfo::decode(&b).unwrap(), e);
    let cap = CapRecord {
        rank: 9,
        port: Some(PortCap { device: "mlx5_0".into(), port: 1, link_layer: 1, lid: 12, gid: [1; 16], gid_index: 0, active_mtu: 5 }),
    };
    assert_eq!(CapRecord::decode(&cap.encode()).unwrap(), cap);
    let none = CapRecord { rank: 2, port: None };
    assert_eq!(CapRecord::decode(&none.encode()).unwrap(), none);
    wire::decode_ready(&wire::encode_ready()).unwrap();
}

#[test]
fn handshake_records_check_magic_version_kind_and_length() {
    let b = endpoint().encode();
    let mut bad = b.clone();
    bad[0] = b'X';
    assert!(matches!(EndpointInfo::decode(&bad), Err(WireError::BadMagic(_))));
    let mut newer = b.clone();
    newer[4..6].copy_from_slice(&(wire::VERSION + 1).to_le_bytes());
    let err = EndpointInfo::decode(&newer).unwrap_err();
    assert!(matches!(err, WireError::Version { .. }));
    assert!(err.to_string().contains("same chorus version"), "{err}");
    let cap = CapRecord { rank: 0, port: None }.encode();
    assert!(matches!(EndpointInfo::decode(&cap), Err(WireError::Kind { got: 1, want: 2 })));
    for cut in 0..b.len() {
        match EndpointInfo::decode(&b[..cut]) {
            Err(WireError::Truncated { got, .. }) => assert_eq!(got, cut),
            other => panic!("prefix of {cut} bytes decoded as {other:?}"),
        }
    }
    let mut long = b.clone();
    long.push(0);
    assert!(matches!(EndpointInfo::decode(&long), Err(WireError::Decode(_))));
}

#[test]
fn capability_pairing_is_symmetric() {
    let port = |ll: u8| Some(PortCap { device: "d".into(), port: 1, link_layer: ll, lid: 0, gid: [0; 16], gid_index: 0, active_mtu: 3 });
    let ib = CapRecord { rank: 0, port: port(1) };
    let roce = CapRecord { rank: 1, port: port(2) };
    let none = CapRecord { rank: 2, port: None };
    assert!(wire::pair_ok(&ib, &ib));
    assert!(!wire::pair_ok(&ib, &roce) && !wire::pair_ok(&roce, &ib));
    assert!(!wire::pair_ok(&ib, &none) && !wire::pair_ok(&none, &ib));
}

#[test]
fn hca_filter_follows_nccl_ib_hca_syntax() {
    let all = HcaFilter::parse("").unwrap();
    assert!(all.accepts("mlx5_0", 1));
    let f = HcaFilter::parse("mlx5_0:1,mlx5_1").unwrap();
    assert!(f.accepts("mlx5_0", 1) && !f.accepts("mlx5_0", 2) && f.accepts("mlx5_1", 2) && !f.accepts("rxe0", 1));
    // Prefix match by default, exact with '='.
    assert!(HcaFilter::parse("mlx5").unwrap().accepts("mlx5_3", 1));
    assert!(!HcaFilter::parse("=mlx5").unwrap().accepts("mlx5_3", 1));
    let ex = HcaFilter::parse("^mlx5_2").unwrap();
    assert!(!ex.accepts("mlx5_2", 1) && ex.accepts("mlx5_0", 1));
    let exx = HcaFilter::parse("^=rxe0:1").unwrap();
    assert!(!exx.accepts("rxe0", 1) && exx.accepts("rxe0", 2) && exx.accepts("rxe01", 1));
    assert!(HcaFilter::parse("mlx5_0:x").is_err());
}

#[test]
fn gid_choice_prefers_roce_v2_ipv4() {
    let v4 = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1];
    let link_local = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let gids = vec![(0, link_local), (1, link_local), (2, v4), (3, v4)];
    let types = |i: u32| Some(if i.is_multiple_of(2) { "IB/RoCE v1\n" } else { "RoCE v2\n" }.to_string());
    assert_eq!(choose_gid(2, &gids, &types, None), Some(3));
    assert_eq!(choose_gid(2, &gids[..2], &types, None), Some(1));
    assert_eq!(choose_gid(2, &gids, &|_| None, None), Some(0));
    assert_eq!(choose_gid(2, &gids, &types, Some(2)), Some(2));
    assert_eq!(choose_gid(1, &gids, &types, None), Some(0));
}

struct FakeNic {
    registrations: AtomicUsize,
}

impl Registrar for &FakeNic {
    type Mr = Registration;
    fn register(&self, whole: &Registration) -> Result<Registration, String> {
        self.registrations.fetch_add(1, Ordering::SeqCst);
        assert_eq!(whole.offset, 0, "the NIC registers whole allocations");
        Ok(*whole)
    }
}

#[test]
fn registration_is_per_allocation_base_and_refcounted() {
    // docs/design.md invariant 2: tensors of 64 B … 4 MB carved out of one allocation at non-zero offsets.
    let registry = Registry::default();
    let nic = FakeNic { registrations: AtomicUsize::new(0) };
    let cache = MrCache::new(&nic);
    let base = 0x7000_0000usize;
    let len = 16 << 20;
    registry.register(base, len, Location::Device(0));
    let mut offsets = Vec::new();
    let mut off = 4096;
    let mut size = 64;
    while size <= 4 << 20 {
        let r = cache.acquire(&registry, base + off).unwrap();
        assert_eq!((r.base, r.len, r.offset), (base, len, off));
        assert_eq!((r.mr.base, r.mr.len, r.mr.location), (base, len, Location::Device(0)));
        offsets.push(off);
        off += size + 64;
        size *= 4;
    }
    assert_eq!(nic.registrations.load(Ordering::SeqCst), 1, "one NIC registration for the whole allocation");
    assert_eq!(cache.registered(), 1);
    // Release by interior pointers: only the last one drops the registration.
    let last = offsets.pop().unwrap();
    for o in offsets {
        assert!(!cache.release(base + o));
    }
    assert!(cache.release(base + last));
    assert_eq!(cache.registered(), 0);
    assert!(cache.acquire(&registry, 0x10).is_err(), "unregistered memory is an error");
}
