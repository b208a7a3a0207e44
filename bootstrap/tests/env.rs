//! Rendezvous parsing (through lookup closures: the process environment is never mutated) and
//! store connection.

use std::collections::HashMap;
use std::time::Duration;

use chorus_bootstrap::env::{self, Overrides, Rendezvous};
use chorus_bootstrap::BootstrapError;

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn torchrun_variables() {
    let v = vars(&[
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "29500"),
        ("RANK", "5"),
        ("WORLD_SIZE", "8"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "4"),
    ]);
    let r = env::from_vars(&v).unwrap();
    assert_eq!(
        (
            r.master_addr.as_str(),
            r.master_port,
            r.rank,
            r.world_size,
            r.local_rank,
            r.local_world_size
        ),
        ("node0", 29500, 5, 8, 1, 4)
    );
    assert_eq!(r.store_addr, None);
}

#[test]
fn slurm_fallbacks() {
    let v = vars(&[
        ("MASTER_ADDR", "n0"),
        ("MASTER_PORT", "1234"),
        ("SLURM_PROCID", "3"),
        ("SLURM_NTASKS", "4"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_NTASKS_PER_NODE", "2(x2)"),
    ]);
    let r = env::from_vars(&v).unwrap();
    assert_eq!(
        (r.rank, r.world_size, r.local_rank, r.local_world_size),
        (3, 4, 1, 2)
    );
    // torchrun's names win over SLURM's.
    let v = vars(&[
        ("MASTER_ADDR", "n0"),
        ("MASTER_PORT", "1"),
        ("RANK", "0"),
        ("SLURM_PROCID", "3"),
        ("WORLD_SIZE", "4"),
    ]);
    assert_eq!(env::from_vars(&v).unwrap().rank, 0);
}

#[test]
fn missing_variables_are_named() {
    let v = vars(&[("MASTER_ADDR", "n0"), ("RANK", "0")]);
    let err = env::from_vars(&v).unwrap_err();
    match &err {
        BootstrapError::MissingEnv { missing } => {
            assert_eq!(missing.len(), 2, "{missing:?}");
            assert!(missing[0].contains("MASTER_PORT") && missing[1].contains("WORLD_SIZE"));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("MASTER_PORT"));
}

#[test]
fn invalid_values_are_rejected() {
    let base = [
        ("MASTER_ADDR", "n0"),
        ("MASTER_PORT", "29500"),
        ("WORLD_SIZE", "2"),
    ];
    for (k, val) in [("RANK", "2"), ("RANK", "-1"), ("RANK", "x")] {
        let mut p = base.to_vec();
        p.push((k, val));
        assert!(
            matches!(
                env::from_vars(&vars(&p)),
                Err(BootstrapError::InvalidEnv { .. })
            ),
            "{k}={val}"
        );
    }
    let v = vars(&[
        ("MASTER_ADDR", "n0"),
        ("MASTER_PORT", "99999"),
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
    ]);
    assert!(
        matches!(env::from_vars(&v), Err(BootstrapError::InvalidEnv { var, .. }) if var == "MASTER_PORT")
    );
    let v = vars(&[
        ("MASTER_ADDR", "n0"),
        ("MASTER_PORT", "1"),
        ("RANK", "0"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", "2"),
        ("LOCAL_WORLD_SIZE", "2"),
    ]);
    assert!(
        matches!(env::from_vars(&v), Err(BootstrapError::InvalidEnv { var, .. }) if var == "LOCAL_RANK")
    );
}

#[test]
fn overrides_win_and_fill_gaps() {
    let v = vars(&[
        ("MASTER_ADDR", "envhost"),
        ("MASTER_PORT", "1000"),
        ("RANK", "1"),
    ]);
    let o = Overrides {
        master_port: Some(2000),
        world_size: Some(3),
        rank: Some(2),
        ..Default::default()
    };
    let r = env::resolve_from_vars(&o, &v).unwrap();
    assert_eq!(
        (r.master_addr.as_str(), r.master_port, r.rank, r.world_size),
        ("envhost", 2000, 2, 3)
    );
    // Local values default to a single-node job.
    assert_eq!((r.local_rank, r.local_world_size), (2, 3));

    let all = Overrides {
        master_addr: Some("h".into()),
        master_port: Some(1),
        rank: Some(0),
        world_size: Some(1),
        local_rank: Some(0),
        local_world_size: Some(1),
    };
    assert!(env::resolve_from_vars(&all, &vars(&[])).is_ok());
    assert!(matches!(
        env::resolve_from_vars(&Overrides::default(), &vars(&[])),
        Err(BootstrapError::MissingEnv { missing }) if missing.len() == 4
    ));
}

#[test]
fn launcher_store_address() {
    let v = vars(&[
        ("CHORUS_STORE_ADDR", "10.0.0.1:4000"),
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
    ]);
    let r = env::from_vars(&v).unwrap();
    assert_eq!(r.store_addr.as_deref(), Some("10.0.0.1:4000"));
    assert_eq!(
        (r.master_addr.as_str(), r.master_port),
        ("10.0.0.1", 4000),
        "MASTER_* default to the store"
    );
    let v = vars(&[
        ("CHORUS_STORE_ADDR", "nonsense"),
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
    ]);
    assert!(matches!(
        env::from_vars(&v),
        Err(BootstrapError::InvalidEnv { .. })
    ));
}

fn rdv(rank: usize, world: usize, port: u16) -> Rendezvous {
    Rendezvous {
        master_addr: "127.0.0.1".into(),
        master_port: port,
        rank,
        world_size: world,
        local_rank: rank,
        local_world_size: world,
        store_addr: None,
    }
}

#[test]
fn store_port_under_torchelastic_agent_store() {
    let r = rdv(0, 1, 29500);
    assert_eq!(env::store_port_from_vars(&r, &vars(&[])), 29500);
    assert_eq!(
        env::store_port_from_vars(&r, &vars(&[("TORCHELASTIC_USE_AGENT_STORE", "False")])),
        29500
    );
    assert_eq!(
        env::store_port_from_vars(&r, &vars(&[("TORCHELASTIC_USE_AGENT_STORE", "True")])),
        29501
    );
}

#[test]
fn connect_store_rank0_hosts() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let t = Duration::from_secs(20);
    // Rank 1 may start first: it retries until rank 0's server is up.
    let r1 = std::thread::spawn(move || {
        let (store, server) = env::connect_store(&rdv(1, 2, port), t).unwrap();
        assert!(server.is_none());
        store.set("rank1", b"hi").unwrap();
        store.wait(&["rank0"], t).unwrap()
    });
    std::thread::sleep(Duration::from_millis(100));
    let (store, server) = env::connect_store(&rdv(0, 2, port), t).unwrap();
    let server = server.expect("rank 0 hosts the store");
    assert_eq!(server.local_addr().port(), port);
    store.set("rank0", b"yo").unwrap();
    assert_eq!(store.wait(&["rank1"], t).unwrap(), vec![b"hi".to_vec()]);
    assert_eq!(r1.join().unwrap(), vec![b"yo".to_vec()]);
}

#[test]
fn connect_store_uses_launcher_store() {
    let server = chorus_bootstrap::StoreServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut r = rdv(0, 1, 1);
    r.store_addr = Some(server.local_addr().to_string());
    let (store, hosted) = env::connect_store(&r, Duration::from_secs(10)).unwrap();
    assert!(
        hosted.is_none(),
        "with CHORUS_STORE_ADDR nobody hosts a second store"
    );
    store.set("k", b"v").unwrap();
}
