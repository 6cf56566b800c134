//! Test data for the real node's S3 tests, made without numpy or a compression library: the
//! digits data set's format (`digits.csv.gz`), gzip'd, and `.npz` weights that
//! `/home/mpiuser/train --init` reads.

/// A gzip file (RFC 1952) of `data` in stored (uncompressed) deflate blocks: what numpy's
/// `loadtxt` reads as `digits.csv.gz`, with no compression library in the tests.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let crc = crc32(data);
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(0xffff).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// The CRC-32 (IEEE) of `data`, as gzip and zip carry it.
fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, entry) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *entry = c;
    }
    !data.iter().fold(!0u32, |c, b| {
        table[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// An `.npz` (a zip of `.npy` files, stored) of little-endian float64 arrays `(name, shape,
/// values)`: what `np.load` reads, with no numpy in the tests.
pub fn npz(arrays: &[(&str, &[usize], Vec<f64>)]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for (name, shape, values) in arrays {
        let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
        let dims = if dims.len() == 1 {
            format!("{},", dims[0])
        } else {
            dims.join(", ")
        };
        let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({dims}), }}");
        // The magic, version and length take 10 bytes; the header ends in a newline at a multiple of 64.
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
        npy.extend_from_slice(header.as_bytes());
        values
            .iter()
            .for_each(|v| npy.extend_from_slice(&v.to_le_bytes()));
        let file = format!("{name}.npy");
        let (crc, size, offset) = (crc32(&npy), npy.len() as u32, out.len() as u32);
        // Version 2.0, no flags, stored, 1980-01-01 00:00.
        let common = |sig: u32, extra: &[u8]| {
            let mut h = sig.to_le_bytes().to_vec();
            h.extend_from_slice(extra);
            for field in [20u16, 0, 0, 0, 0x21] {
                h.extend_from_slice(&field.to_le_bytes());
            }
            for field in [crc, size, size] {
                h.extend_from_slice(&field.to_le_bytes());
            }
            h.extend_from_slice(&(file.len() as u16).to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes());
            h
        };
        out.extend(common(0x0403_4b50, &[]));
        out.extend_from_slice(file.as_bytes());
        out.extend(npy);
        central.extend(common(0x0201_4b50, &20u16.to_le_bytes()));
        // Comment length, disk, internal and external attributes, the local header's offset.
        for field in [0u16, 0, 0] {
            central.extend_from_slice(&field.to_le_bytes());
        }
        central.extend_from_slice(&0u32.to_le_bytes());
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(file.as_bytes());
    }
    let (at, size, count) = (out.len() as u32, central.len() as u32, arrays.len() as u16);
    out.extend(central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    for field in [0u16, 0, count, count] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&at.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// A learnable data set in the digits format (64 pixel columns 0..16, the label last): each
/// class lights its own pixels, with some deterministic noise.
pub fn digits_csv(rows: usize) -> String {
    let mut csv = String::new();
    for row in 0..rows {
        let label = row % 10;
        let pixels: Vec<String> = (0..64)
            .map(|p| {
                let lit = p % 10 == label;
                let noise = (row * 31 + p * 17) % 5;
                (if lit { 12 + noise % 5 } else { noise }).to_string()
            })
            .collect();
        csv.push_str(&format!("{},{label}\n", pixels.join(",")));
    }
    csv
}

/// Initial weights of train.py's network (64-32-10), small and deterministic.
pub fn initial_model() -> Vec<u8> {
    let weights = |n: usize, scale: f64| (0..n).map(|i| ((i * 7919 % 13) as f64 - 6.0) * scale).collect();
    npz(&[
        ("w1", &[64, 32], weights(64 * 32, 0.02)),
        ("b1", &[32], vec![0.0; 32]),
        ("w2", &[32, 10], weights(32 * 10, 0.05)),
        ("b2", &[10], vec![0.0; 10]),
    ])
}

/// Creates `bucket` with the layout of `examples/s3-digits.yaml`: a learnable data set at
/// `digits/digits.csv.gz` and initial weights at `init/init.npz`; returns both as uploaded.
pub async fn seed_digits(s3: &crate::s3::S3, bucket: &str) -> (Vec<u8>, Vec<u8>) {
    let data = gzip_stored(digits_csv(500).as_bytes());
    let model = initial_model();
    s3.create_bucket(bucket).await.expect("create the bucket");
    s3.put_object(bucket, "digits/digits.csv.gz", data.clone())
        .await
        .expect("put the data set");
    s3.put_object(bucket, "init/init.npz", model.clone())
        .await
        .expect("put the initial model");
    (data, model)
}
