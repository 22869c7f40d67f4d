//! Shared by the fuzz targets: cut the input into fields.

/// Splits `data` into (name, value) pairs: records separated by '\n', name
/// and value by the first ':' (a record without one is a name with an empty
/// value). Keeps every byte otherwise, so invalid characters get through.
pub fn fields(data: &[u8]) -> Vec<(&[u8], &[u8])> {
    data.split(|&b| b == b'\n')
        .map(|rec| match rec.iter().skip(1).position(|&b| b == b':') {
            Some(i) => (&rec[..i + 1], &rec[i + 2..]),
            None => (rec, &b""[..]),
        })
        .collect()
}
