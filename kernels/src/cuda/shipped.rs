//! The kernel module compiled ahead of time by `build.rs` and embedded in the library: per shipped
//! architecture, one deflated cubin per part of the module (`parts::module_parts`). A device whose
//! architecture is shipped (or shares its major version with a lower shipped minor, which its driver
//! runs: CUDA's binary compatibility within a major version) loads these with no NVRTC call.

use super::cubin;
use crate::{KernelError, Result};

mod table {
    include!(concat!(env!("OUT_DIR"), "/shipped_kernels.rs"));
}

/// The architectures (`XY` of `sm_XY`) shipped in this library, ascending. Empty when the build machine
/// had no NVRTC (the build said so) or `CHORUS_KERNEL_ARCHS=none`.
pub fn shipped_archs() -> Vec<u32> {
    let mut v: Vec<u32> = table::SHIPPED.iter().map(|(a, _)| *a).collect();
    v.sort_unstable();
    v
}

/// The NVRTC version (major, minor) that compiled the shipped kernels, if any are shipped.
pub fn shipped_nvrtc_version() -> Option<(i32, i32)> {
    table::BUILT_WITH_NVRTC
}

/// The shipped architecture a device of compute capability `major.minor` runs: its own, else the
/// highest shipped one of the same major version with a lower minor.
pub(crate) fn pick(major: i32, minor: i32) -> Option<u32> {
    let (major, minor) = (u32::try_from(major).ok()?, u32::try_from(minor).ok()?);
    let own = major * 10 + minor;
    shipped_archs().into_iter().filter(|&a| a / 10 == major && a % 10 <= minor).max().filter(|&a| a <= own)
}

/// Every part of the module for `arch`, unpacked and checked, in the order of `parts::module_parts`.
pub(crate) fn cubins(arch: u32) -> Result<Vec<Vec<u8>>> {
    let (_, packed) = table::SHIPPED
        .iter()
        .find(|(a, _)| *a == arch)
        .ok_or_else(|| KernelError::CudaUnavailable(format!("sm_{arch} is not shipped in this library")))?;
    packed
        .iter()
        .enumerate()
        .map(|(i, p)| {
            cubin::unpack(p, arch).map_err(|e| KernelError::Cuda {
                what: format!("unpacking the shipped kernels (part {i}, sm_{arch})"),
                reason: format!("{e}: the library is damaged; reinstall it"),
            })
        })
        .collect()
}

/// The shipped images for `arch`, packed as embedded (for checks without a GPU).
#[doc(hidden)]
pub fn packed_images(arch: u32) -> Option<&'static [&'static [u8]]> {
    table::SHIPPED.iter().find(|(a, _)| *a == arch).map(|(_, p)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_architecture_has_every_part_as_an_image_for_itself() {
        let parts = super::super::parts::module_parts().len();
        for arch in shipped_archs() {
            let images = cubins(arch).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(images.len(), parts, "sm_{arch}: one image per part");
            for img in &images {
                assert_eq!(cubin::image_arch(img), Ok(arch));
            }
        }
    }

    #[test]
    fn a_device_runs_its_own_or_a_lower_minor_of_its_major() {
        let shipped = shipped_archs();
        for (major, minor) in [(7, 5), (8, 0), (8, 6), (8, 7), (8, 9), (9, 0), (10, 0), (10, 3), (12, 0), (12, 1), (11, 0)] {
            let own = (major * 10 + minor) as u32;
            match pick(major, minor) {
                Some(a) => {
                    assert!(shipped.contains(&a));
                    assert_eq!(a / 10, major as u32, "same major for {own}");
                    assert!(a <= own);
                    if shipped.contains(&own) {
                        assert_eq!(a, own, "exact match preferred");
                    }
                }
                None => assert!(!shipped.iter().any(|&a| a / 10 == major as u32 && a <= own), "{own}"),
            }
        }
        assert_eq!(pick(-1, 0), None);
    }
}
