//! Checks that bytes are a CUDA machine-code image (a cubin: an ELF file for `EM_CUDA`) and reads the
//! architecture it was built for, without a GPU; unpacks the deflated images the library ships.
//! Standalone (std and miniz_oxide only): the build script checks what NVRTC produced with it before
//! shipping, and the library checks what it is about to load.

/// Largest image [`unpack`] accepts (a part is about 1 MB): a bound, so a damaged stream cannot make
/// it allocate without limit.
const MAX_IMAGE_BYTES: usize = 64 << 20;

/// `EI_OSABI` of CUDA images: 0x33 up to ABI version 7, 0x41 from version 8 (CUDA 12.8+).
const CUDA_OSABI: [u8; 2] = [0x33, 0x41];
/// `EM_CUDA` in the ELF header's `e_machine`.
const EM_CUDA: u16 = 190;

/// The architecture (`XY` of `sm_XY`) an image was built for.
pub(crate) fn image_arch(bytes: &[u8]) -> Result<u32, String> {
    let header = bytes.get(..64).ok_or_else(|| format!("{} bytes, shorter than an ELF header", bytes.len()))?;
    if &header[..4] != b"\x7fELF" {
        return Err("no ELF magic".into());
    }
    if header[4] != 2 || header[5] != 1 {
        return Err(format!("ELF class {} / data {}, not 64-bit little-endian", header[4], header[5]));
    }
    if !CUDA_OSABI.contains(&header[7]) {
        return Err(format!("EI_OSABI {:#x}, not CUDA's", header[7]));
    }
    let machine = u16::from_le_bytes([header[18], header[19]]);
    if machine != EM_CUDA {
        return Err(format!("e_machine {machine}, not EM_CUDA ({EM_CUDA})"));
    }
    let flags = u32::from_le_bytes([header[48], header[49], header[50], header[51]]);
    // The CUDA ELF ABI (EI_ABIVERSION) 8 and later, which CUDA 12.8+ toolchains write, keep the SM in
    // bits 8..16 of e_flags; earlier ones kept it in bits 0..8.
    let abi = header[8];
    Ok(if abi >= 8 { (flags >> 8) & 0xff } else { flags & 0xff })
}

/// Ok if `bytes` is an image for `sm_{arch}`.
pub(crate) fn check_image(bytes: &[u8], arch: u32) -> Result<(), String> {
    match image_arch(bytes)? {
        a if a == arch => Ok(()),
        a => Err(format!("built for sm_{a}, expected sm_{arch}")),
    }
}

/// The image packed (zlib) in `packed`, checked to be an image for `sm_{arch}`.
pub(crate) fn unpack(packed: &[u8], arch: u32) -> Result<Vec<u8>, String> {
    let image = miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(packed, MAX_IMAGE_BYTES)
        .map_err(|e| format!("cannot inflate the packed image: {:?}", e.status))?;
    check_image(&image, arch)?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF header as NVRTC 13 writes it for `sm_{arch}` (ABI version 8).
    fn header(arch: u32) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        (h[4], h[5], h[7], h[8]) = (2, 1, 0x41, 8);
        h[18..20].copy_from_slice(&EM_CUDA.to_le_bytes());
        h[48..52].copy_from_slice(&(0x0600_0004 | (arch << 8)).to_le_bytes());
        h
    }

    #[test]
    fn reads_the_architecture_of_both_abi_versions() {
        assert_eq!(image_arch(&header(90)), Ok(90));
        assert_eq!(check_image(&header(120), 120), Ok(()));
        assert!(check_image(&header(100), 90).unwrap_err().contains("sm_100"));
        let mut old = header(0);
        (old[7], old[8]) = (0x33, 7);
        old[48..52].copy_from_slice(&0x0050_0050u32.to_le_bytes());
        assert_eq!(image_arch(&old), Ok(80));
    }

    #[test]
    fn rejects_what_is_not_a_cuda_image() {
        assert!(image_arch(&header(90)[..63]).is_err(), "truncated");
        let mut h = header(90);
        h[0] = 0;
        assert!(image_arch(&h).unwrap_err().contains("magic"));
        let mut h = header(90);
        h[18] = 62; // EM_X86_64
        assert!(image_arch(&h).unwrap_err().contains("e_machine"));
        let mut h = header(90);
        h[7] = 0;
        assert!(image_arch(&h).unwrap_err().contains("OSABI"));
        let mut h = header(90);
        h[4] = 1;
        assert!(image_arch(&h).is_err(), "32-bit");
    }

    #[test]
    fn unpacks_what_was_packed_and_rejects_damage() {
        let mut image = header(90);
        image.extend((0..4000u32).map(|i| (i % 251) as u8));
        let packed = miniz_oxide::deflate::compress_to_vec_zlib(&image, 9);
        assert_eq!(unpack(&packed, 90), Ok(image.clone()));
        assert!(unpack(&packed, 80).is_err(), "wrong architecture");
        assert!(unpack(&packed[..packed.len() / 2], 90).is_err(), "truncated stream");
        let mut flipped = packed.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x55;
        assert!(unpack(&flipped, 90).is_err(), "damaged stream");
    }
}
