//! Kubernetes quantities (`500m`, `2`, `1.5Gi`, `10e3`), parsed by the grammar of
//! `resource.ParseQuantity`, which the CRD's `isQuantity` rule applies at admission.

/// Whether `text` is a Kubernetes quantity.
pub fn is_quantity(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let mut position = usize::from(matches!(bytes[0], b'+' | b'-'));
    let digits = |position: &mut usize| {
        let start = *position;
        while bytes.get(*position).is_some_and(u8::is_ascii_digit) {
            *position += 1;
        }
        *position - start
    };
    let whole = digits(&mut position);
    let mut fraction = 0;
    if bytes.get(position) == Some(&b'.') {
        position += 1;
        fraction = digits(&mut position);
    }
    if whole + fraction == 0 {
        // A lone sign is zero to Kubernetes; a lone '.' is not a number.
        return position == bytes.len() && position > 0 && bytes[position - 1] != b'.';
    }
    let suffix = &text[position..];
    matches!(
        suffix,
        "" | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
            | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
    ) || suffix.strip_prefix(['e', 'E']).is_some_and(|exponent| {
        let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
        !digits.is_empty()
            && digits.bytes().all(|byte| byte.is_ascii_digit())
            && exponent.parse::<i32>().is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_as_kubernetes_parses_them() {
        let valid = [
            "1Gi", "500m", "2", "1.5", "1.5Gi", "0.5", ".5", "1.", "10e3", "1E6", "1e-3", "-1",
            "+2k", "100M", "1Ti", "1000n", "3u",
        ];
        let invalid = [
            "", "lots", "1 Gi", "1GB", "1g", "Gi", "1.2.3", "1e", "1e+", ".", "1Gi2", "1KiB",
            "10ki", "e3",
        ];
        for text in valid {
            assert!(is_quantity(text), "{text} is a quantity");
        }
        for text in invalid {
            assert!(!is_quantity(text), "{text} is not a quantity");
        }
    }
}
