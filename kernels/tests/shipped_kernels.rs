//! The library ships the kernel module compiled ahead of time (`kernels/build.rs`) for every
//! data-centre and workstation architecture, each image present and an image for its architecture,
//! checked without a GPU. It needs a build that had NVRTC (`scripts/test-all` installs it before
//! building and runs this with `--ignored`); a build without NVRTC ships nothing, so elsewhere this
//! reports as ignored, never as passed.
#![cfg(feature = "cuda")]

use chorus_kernels::cuda::{packed_images, shipped_archs, shipped_nvrtc_version};

/// At least these (the list); build.rs ships sm_75 and sm_103 too where NVRTC supports them.
const REQUIRED: [u32; 6] = [80, 86, 89, 90, 100, 120];

fn inflate(packed: &[u8]) -> Vec<u8> {
    miniz_oxide::inflate::decompress_to_vec_zlib(packed).expect("a packed image inflates")
}

/// The SM of an ELF image for EM_CUDA (190), read the way the driver's loader would see it.
fn sm_of(image: &[u8]) -> u32 {
    assert_eq!(&image[..4], b"\x7fELF", "ELF magic");
    assert_eq!(u16::from_le_bytes([image[18], image[19]]), 190, "e_machine is EM_CUDA");
    let flags = u32::from_le_bytes(image[48..52].try_into().unwrap());
    if image[8] >= 8 {
        (flags >> 8) & 0xff
    } else {
        flags & 0xff
    }
}

#[test]
#[ignore = "needs a build with NVRTC present; scripts/test-all installs it and runs this"]
fn every_required_architecture_is_shipped_as_images_for_itself() {
    let version = shipped_nvrtc_version().expect("this build shipped no kernels: was NVRTC found at build time?");
    let archs = shipped_archs();
    println!("shipped by NVRTC {}.{}: {:?}", version.0, version.1, archs.iter().map(|a| format!("sm_{a}")).collect::<Vec<_>>());
    for a in REQUIRED {
        assert!(archs.contains(&a), "sm_{a} not shipped: {archs:?}");
    }
    let mut total = 0usize;
    for a in &archs {
        let images = packed_images(*a).unwrap();
        assert_eq!(images.len(), 16, "sm_{a}: one image per part of the module");
        for p in images {
            total += p.len();
            let image = inflate(p);
            assert_eq!(sm_of(&image), *a, "an image shipped as sm_{a} is built for it");
            assert!(image.len() > 10_000, "a part holds real machine code ({} bytes)", image.len());
        }
    }
    println!("{total} bytes embedded (deflated)");
}
