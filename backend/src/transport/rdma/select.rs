//! Device, port and GID selection (pure logic; the sysfs/verbs queries live in `mod.rs`).
//!
//! The filter (`RdmaOptions::hca`, `CHORUS_IB_HCA`) follows `NCCL_IB_HCA`: a comma list of `device[:port]`; a leading `^` makes
//! it an exclude list; a leading `=` (after any `^`) makes names match exactly instead of by
//! prefix. Examples: `mlx5_0:1`, `mlx5_0,mlx5_1`, `^mlx5_2`, `=mlx5_1`, `^=rxe0:1`.
//! `RdmaOptions::gid_index` (`CHORUS_IB_GID_INDEX`) forces the GID index; otherwise InfiniBand uses GID 0 and RoCE prefers
//! a RoCE v2 GID holding an IPv4-mapped address, then any RoCE v2 GID, then any non-zero GID.

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HcaFilter {
    pub exclude: bool,
    pub exact: bool,
    pub entries: Vec<(String, Option<u8>)>,
}

impl HcaFilter {
    pub fn parse(spec: &str) -> Result<HcaFilter, String> {
        let mut s = spec.trim();
        let mut f = HcaFilter::default();
        if let Some(rest) = s.strip_prefix('^') {
            f.exclude = true;
            s = rest;
        }
        if let Some(rest) = s.strip_prefix('=') {
            f.exact = true;
            s = rest;
        }
        for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let (name, port) = match item.split_once(':') {
                Some((n, p)) => {
                    let port = p.trim().parse::<u8>().map_err(|_| format!("CHORUS_IB_HCA: bad port in {item:?} (expected device[:port])"))?;
                    (n.trim(), Some(port))
                }
                None => (item, None),
            };
            if name.is_empty() {
                return Err(format!("CHORUS_IB_HCA: empty device name in {item:?}"));
            }
            f.entries.push((name.to_string(), port));
        }
        Ok(f)
    }

    fn listed(&self, device: &str, port: u8) -> bool {
        self.entries.iter().any(|(n, p)| {
            let name_ok = if self.exact { device == n } else { device.starts_with(n.as_str()) };
            name_ok && p.is_none_or(|p| p == port)
        })
    }

    pub fn accepts(&self, device: &str, port: u8) -> bool {
        if self.entries.is_empty() {
            return true;
        }
        self.listed(device, port) != self.exclude
    }
}

/// Chooses the GID index for a port. `gids`: the non-zero GIDs as (index, raw); `gid_type(i)`:
/// the kernel's type string for index i ("IB/RoCE v1", "RoCE v2"), if known.
pub fn choose_gid(link_layer: u8, gids: &[(u32, [u8; 16])], gid_type: &dyn Fn(u32) -> Option<String>, forced: Option<u32>) -> Option<u32> {
    if let Some(i) = forced {
        return Some(i);
    }
    if link_layer != super::ffi::IBV_LINK_LAYER_ETHERNET {
        // InfiniBand: GID 0 (the port GID); routing is by LID inside a subnet.
        return Some(gids.iter().find(|(i, _)| *i == 0).map(|(i, _)| *i).unwrap_or(0));
    }
    let v2 = |i: u32| gid_type(i).is_some_and(|t| t.trim().eq_ignore_ascii_case("RoCE v2"));
    let v4_mapped = |g: &[u8; 16]| g[..10].iter().all(|b| *b == 0) && g[10] == 0xff && g[11] == 0xff;
    gids.iter()
        .find(|(i, g)| v2(*i) && v4_mapped(g))
        .or_else(|| gids.iter().find(|(i, _)| v2(*i)))
        .or_else(|| gids.first())
        .map(|(i, _)| *i)
}

/// The GID index `spec` forces (`RdmaOptions::gid_index`, `CHORUS_IB_GID_INDEX`), if any.
pub fn forced_gid_index(spec: Option<&str>) -> Result<Option<u32>, String> {
    match spec {
        Some(v) if !v.trim().is_empty() => {
            v.trim().parse::<u32>().map(Some).map_err(|_| format!("CHORUS_IB_GID_INDEX={v:?} is not a number"))
        }
        _ => Ok(None),
    }
}
