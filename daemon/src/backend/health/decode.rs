//! Turning what a PLC answered (registers or bits) into the number a probe's checks look at:
//! `raw × scale + offset`, with the policy's data type and word order.

use otpatch_common::policy::{DataType, Probe, WordOrder};

/// What one read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Data {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

/// The probe's value from the data read. Fails when the data is too short for the type (a malformed answer that
/// the transport did not catch) or does not make a finite number (an `f32` that is NaN or infinite).
pub(crate) fn value(probe: &Probe, data: &Data) -> Result<f64, String> {
    let raw = raw_value(probe.data_type, probe.word_order, data)?;
    let value = raw * probe.scale + probe.offset;
    if !value.is_finite() {
        return Err(format!("value is not a finite number ({value})"));
    }
    Ok(value)
}

fn raw_value(data_type: DataType, order: WordOrder, data: &Data) -> Result<f64, String> {
    match (data_type, data) {
        (DataType::Bool, Data::Bits(bits)) => {
            let bit = bits.first().ok_or("the answer holds no bits")?;
            Ok(if *bit { 1.0 } else { 0.0 })
        }
        (DataType::Bool, Data::Registers(_)) => Err("expected bits, the answer holds registers".into()),
        (_, Data::Bits(_)) => Err("expected registers, the answer holds bits".into()),
        (DataType::U16, Data::Registers(regs)) => Ok(f64::from(first(regs)?)),
        (DataType::I16, Data::Registers(regs)) => Ok(f64::from(first(regs)? as i16)),
        (DataType::U32, Data::Registers(regs)) => Ok(f64::from(dword(regs, order)?)),
        (DataType::I32, Data::Registers(regs)) => Ok(f64::from(dword(regs, order)? as i32)),
        (DataType::F32, Data::Registers(regs)) => Ok(f64::from(f32::from_bits(dword(regs, order)?))),
    }
}

fn first(regs: &[u16]) -> Result<u16, String> {
    regs.first().copied().ok_or_else(|| "the answer holds no registers".to_string())
}

fn dword(regs: &[u16], order: WordOrder) -> Result<u32, String> {
    let [a, b] = match regs {
        [a, b, ..] => [*a, *b],
        _ => return Err(format!("a 32-bit value needs 2 registers, the answer holds {}", regs.len())),
    };
    let (hi, lo) = match order {
        WordOrder::Big => (a, b),
        WordOrder::Little => (b, a),
    };
    Ok((u32::from(hi) << 16) | u32::from(lo))
}

/// A value for people: at most 6 significant digits, no trailing zeros (`95.2`, `90`, `-3.5`, `0.000125`), so
/// that an `f32` read as 95.19999694824219 shows as the 95.2 the PLC meant.
pub(crate) fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (5 - magnitude).clamp(0, 12) as usize;
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    if s == "-0" {
        "0".to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::testutil::probe;

    fn with(data_type: DataType, order: WordOrder) -> Probe {
        let mut p = probe("p");
        p.data_type = data_type;
        p.word_order = order;
        p
    }

    #[test]
    fn sixteen_bit_types() {
        let p = with(DataType::U16, WordOrder::Big);
        assert_eq!(value(&p, &Data::Registers(vec![0xFFFE])), Ok(65534.0));
        let p = with(DataType::I16, WordOrder::Big);
        assert_eq!(value(&p, &Data::Registers(vec![0xFFFE])), Ok(-2.0));
        // Extra registers (count larger than the type) are ignored.
        assert_eq!(value(&p, &Data::Registers(vec![7, 9, 9])), Ok(7.0));
    }

    #[test]
    fn thirty_two_bit_types_and_word_order() {
        let p = with(DataType::U32, WordOrder::Big);
        assert_eq!(value(&p, &Data::Registers(vec![0x0001, 0x0002])), Ok(65538.0));
        let p = with(DataType::U32, WordOrder::Little);
        assert_eq!(value(&p, &Data::Registers(vec![0x0002, 0x0001])), Ok(65538.0));
        let p = with(DataType::I32, WordOrder::Big);
        assert_eq!(value(&p, &Data::Registers(vec![0xFFFF, 0xFFFD])), Ok(-3.0));
        let p = with(DataType::F32, WordOrder::Big);
        let bits = 72.5f32.to_bits();
        assert_eq!(value(&p, &Data::Registers(vec![(bits >> 16) as u16, bits as u16])), Ok(72.5));
        let p = with(DataType::F32, WordOrder::Little);
        assert_eq!(value(&p, &Data::Registers(vec![bits as u16, (bits >> 16) as u16])), Ok(72.5));
    }

    #[test]
    fn scale_and_offset() {
        let mut p = with(DataType::I16, WordOrder::Big);
        p.scale = 0.1;
        p.offset = -40.0;
        let v = value(&p, &Data::Registers(vec![1000])).unwrap();
        assert!((v - 60.0).abs() < 1e-9, "{v}");
    }

    #[test]
    fn bits() {
        let p = with(DataType::Bool, WordOrder::Big);
        assert_eq!(value(&p, &Data::Bits(vec![true, false])), Ok(1.0));
        assert_eq!(value(&p, &Data::Bits(vec![false])), Ok(0.0));
    }

    #[test]
    fn malformed_answers_are_errors() {
        let p = with(DataType::F32, WordOrder::Big);
        assert_eq!(
            value(&p, &Data::Registers(vec![1])),
            Err("a 32-bit value needs 2 registers, the answer holds 1".to_string())
        );
        let nan = f32::NAN.to_bits();
        assert_eq!(
            value(&p, &Data::Registers(vec![(nan >> 16) as u16, nan as u16])),
            Err("value is not a finite number (NaN)".to_string())
        );
        let p = with(DataType::U16, WordOrder::Big);
        assert_eq!(value(&p, &Data::Registers(vec![])), Err("the answer holds no registers".to_string()));
        assert_eq!(value(&p, &Data::Bits(vec![true])), Err("expected registers, the answer holds bits".to_string()));
    }

    #[test]
    fn values_for_people() {
        assert_eq!(fmt_value(f64::from(95.2f32)), "95.2");
        assert_eq!(fmt_value(90.0), "90");
        assert_eq!(fmt_value(-3.5), "-3.5");
        assert_eq!(fmt_value(0.000125), "0.000125");
        assert_eq!(fmt_value(123456789.0), "123456789");
        assert_eq!(fmt_value(0.0), "0");
        assert_eq!(fmt_value(1.0 / 3.0), "0.333333");
    }
}
