//! Turns PostgreSQL column values (binary wire format) into JSON values for
//! templates. Every type gets a deliberate representation; a type this module
//! does not know is read as its PostgreSQL text form (see [`is_decodable`]).

use std::net::IpAddr;

use base64::Engine as _;
use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, NaiveDateTime, NaiveTime};
use fallible_iterator::FallibleIterator;
use postgres_protocol::types as wire;
use serde_json::{Number, Value};
use tokio_postgres::types::{FromSql, Kind, Type};

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// A column value that could not be decoded. Carries no row data.
#[derive(Debug, thiserror::Error)]
#[error("column {column:?} of type {type_name}: {source}")]
pub struct DecodeError {
    pub column: String,
    pub type_name: String,
    #[source]
    pub source: BoxError,
}

/// A column value as it came off the wire, whatever its type.
pub struct RawValue<'a>(pub Option<&'a [u8]>);

impl<'a> FromSql<'a> for RawValue<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Self(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Self(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Whether [`decode`] understands the binary form of `ty`. Columns of other
/// types must be cast to text by the query runner before they are read.
pub fn is_decodable(ty: &Type) -> bool {
    match ty.kind() {
        Kind::Enum(_) => true,
        Kind::Array(element) => is_decodable(element),
        Kind::Domain(base) => is_decodable(base),
        _ => {
            matches!(
                *ty,
                Type::BOOL
                    | Type::INT2
                    | Type::INT4
                    | Type::INT8
                    | Type::OID
                    | Type::FLOAT4
                    | Type::FLOAT8
                    | Type::NUMERIC
                    | Type::TEXT
                    | Type::VARCHAR
                    | Type::BPCHAR
                    | Type::NAME
                    | Type::CHAR
                    | Type::UNKNOWN
                    | Type::XML
                    | Type::UUID
                    | Type::JSON
                    | Type::JSONB
                    | Type::TIMESTAMPTZ
                    | Type::TIMESTAMP
                    | Type::DATE
                    | Type::TIME
                    | Type::TIMETZ
                    | Type::INTERVAL
                    | Type::BYTEA
                    | Type::INET
                    | Type::CIDR
                    | Type::MACADDR
            ) || ty.name() == "citext"
        }
    }
}

/// Decodes one column value. `column` only names the column in errors.
pub fn decode(column: &str, ty: &Type, raw: Option<&[u8]>) -> Result<Value, DecodeError> {
    let Some(raw) = raw else {
        return Ok(Value::Null);
    };
    decode_non_null(ty, raw).map_err(|source| DecodeError {
        column: column.to_owned(),
        type_name: ty.name().to_owned(),
        source,
    })
}

fn decode_non_null(ty: &Type, raw: &[u8]) -> Result<Value, BoxError> {
    match ty.kind() {
        Kind::Enum(_) => return Ok(Value::String(wire::text_from_sql(raw)?.to_owned())),
        Kind::Array(element) => return decode_array(element, raw),
        Kind::Domain(base) => return decode_non_null(base, raw),
        _ => {}
    }
    Ok(match *ty {
        Type::BOOL => Value::Bool(wire::bool_from_sql(raw)?),
        Type::INT2 => Value::from(wire::int2_from_sql(raw)?),
        Type::INT4 => Value::from(wire::int4_from_sql(raw)?),
        Type::INT8 => Value::from(wire::int8_from_sql(raw)?),
        Type::OID => Value::from(wire::oid_from_sql(raw)?),
        Type::FLOAT4 => float(f64::from(wire::float4_from_sql(raw)?)),
        Type::FLOAT8 => float(wire::float8_from_sql(raw)?),
        Type::NUMERIC => Value::String(numeric_to_string(raw)?),
        Type::CHAR => Value::String(char::from(wire::char_from_sql(raw)? as u8).to_string()),
        Type::UUID => Value::String(uuid_to_string(wire::uuid_from_sql(raw)?)),
        Type::JSON => serde_json::from_slice(raw)?,
        Type::JSONB => match raw.split_first() {
            Some((1, body)) => serde_json::from_slice(body)?,
            _ => return Err("unsupported jsonb version".into()),
        },
        Type::TIMESTAMPTZ => timestamp(wire::timestamp_from_sql(raw)?, true),
        Type::TIMESTAMP => timestamp(wire::timestamp_from_sql(raw)?, false),
        Type::DATE => date(wire::date_from_sql(raw)?),
        Type::TIME => Value::String(time_of_day(wire::time_from_sql(raw)?)),
        Type::TIMETZ => Value::String(time_with_zone(raw)?),
        Type::INTERVAL => Value::String(interval_to_iso8601(raw)?),
        Type::BYTEA => Value::String(base64::engine::general_purpose::STANDARD.encode(raw)),
        Type::INET | Type::CIDR => Value::String(inet_to_string(ty, raw)?),
        Type::MACADDR => Value::String(
            wire::macaddr_from_sql(raw)?
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
        ),
        // text, varchar, bpchar, name, unknown, xml, citext, and anything the
        // query runner cast to text: the binary form is the text itself.
        _ => Value::String(wire::text_from_sql(raw)?.to_owned()),
    })
}

/// NaN and the infinities have no JSON number form; PostgreSQL's spelling is kept.
fn float(f: f64) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::String("NaN".into()),
        None if f > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

fn decode_array(element: &Type, raw: &[u8]) -> Result<Value, BoxError> {
    let array = wire::array_from_sql(raw)?;
    let dims: Vec<usize> =
        array.dimensions().map(|d| Ok(usize::try_from(d.len).unwrap_or(0))).collect()?;
    let values: Vec<Value> = array
        .values()
        .map(|v| match v {
            None => Ok(Value::Null),
            Some(bytes) => decode_non_null(element, bytes),
        })
        .collect()?;
    if dims.is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    // The header's dimensions are the sender's word: nesting trusts them,
    // so they must describe exactly the elements that came (a header
    // claiming 2^31 x 2^31 with no elements would loop for ever).
    // PostgreSQL sends an empty array with no dimensions, so a dimension of
    // length 0 (or a negative one) is never real, and would let the outer
    // ones loop without elements.
    let described = dims.iter().try_fold(1usize, |n, d| n.checked_mul(*d));
    if dims.contains(&0) || described != Some(values.len()) {
        return Err("array dimensions do not match its elements".into());
    }
    Ok(nest(&dims, &mut values.into_iter()))
}

/// Rebuilds a multi-dimensional array from its flat, row-major values.
fn nest(dims: &[usize], values: &mut std::vec::IntoIter<Value>) -> Value {
    match dims.split_first() {
        Some((&len, [])) => Value::Array(values.take(len).collect()),
        Some((&len, rest)) => Value::Array((0..len).map(|_| nest(rest, values)).collect()),
        None => Value::Null,
    }
}

fn uuid_to_string(b: [u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

fn pg_epoch() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2000, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("2000-01-01 is a valid date")
}

/// PostgreSQL sends ±infinity as the extreme i64/i32 values.
fn timestamp(micros: i64, with_zone: bool) -> Value {
    match micros {
        i64::MAX => return Value::String("infinity".into()),
        i64::MIN => return Value::String("-infinity".into()),
        _ => {}
    }
    let Some(t) = pg_epoch().checked_add_signed(ChronoDuration::microseconds(micros)) else {
        return Value::String(micros.to_string());
    };
    let formatted = if with_zone {
        DateTime::<chrono::Utc>::from_naive_utc_and_offset(t, chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.f").to_string()
    };
    Value::String(formatted)
}

fn date(days: i32) -> Value {
    match days {
        i32::MAX => Value::String("infinity".into()),
        i32::MIN => Value::String("-infinity".into()),
        _ => match pg_epoch().date().checked_add_signed(ChronoDuration::days(i64::from(days))) {
            Some(d) => Value::String(d.format("%Y-%m-%d").to_string()),
            None => Value::String(days.to_string()),
        },
    }
}

fn time_of_day(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let nanos = (micros.rem_euclid(1_000_000) * 1000) as u32;
    // 24:00:00 is a valid PostgreSQL time but not a chrono one.
    if secs >= 86_400 {
        return "24:00:00".into();
    }
    NaiveTime::from_num_seconds_from_midnight_opt(secs as u32, nanos)
        .map(|t| t.format("%H:%M:%S%.f").to_string())
        .unwrap_or_else(|| micros.to_string())
}

fn time_with_zone(raw: &[u8]) -> Result<String, BoxError> {
    if raw.len() != 12 {
        return Err("invalid timetz length".into());
    }
    let micros = i64::from_be_bytes(raw[0..8].try_into()?);
    // The wire offset is seconds *west* of UTC; ISO 8601 writes east as positive.
    let west = i32::from_be_bytes(raw[8..12].try_into()?);
    let east = -west;
    let sign = if east < 0 { '-' } else { '+' };
    let abs = east.unsigned_abs();
    let mut zone = format!("{sign}{:02}:{:02}", abs / 3600, (abs % 3600) / 60);
    if abs % 60 != 0 {
        zone.push_str(&format!(":{:02}", abs % 60));
    }
    Ok(format!("{}{zone}", time_of_day(micros)))
}

/// Formats like PostgreSQL's `intervalstyle = iso_8601`: each field keeps its own sign.
fn interval_to_iso8601(raw: &[u8]) -> Result<String, BoxError> {
    if raw.len() != 16 {
        return Err("invalid interval length".into());
    }
    let micros = i64::from_be_bytes(raw[0..8].try_into()?);
    let days = i32::from_be_bytes(raw[8..12].try_into()?);
    let months = i32::from_be_bytes(raw[12..16].try_into()?);
    let (years, months) = (months / 12, months % 12);
    let hours = micros / 3_600_000_000;
    let minutes = (micros % 3_600_000_000) / 60_000_000;
    let sub_minute = micros % 60_000_000;

    let mut out = String::from("P");
    for (value, unit) in [(i64::from(years), 'Y'), (i64::from(months), 'M'), (i64::from(days), 'D')]
    {
        if value != 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    if hours != 0 || minutes != 0 || sub_minute != 0 {
        out.push('T');
        if hours != 0 {
            out.push_str(&format!("{hours}H"));
        }
        if minutes != 0 {
            out.push_str(&format!("{minutes}M"));
        }
        if sub_minute != 0 {
            let sign = if sub_minute < 0 { "-" } else { "" };
            let abs = sub_minute.unsigned_abs();
            let (secs, frac) = (abs / 1_000_000, abs % 1_000_000);
            if frac == 0 {
                out.push_str(&format!("{sign}{secs}S"));
            } else {
                let frac = format!("{frac:06}");
                out.push_str(&format!("{sign}{secs}.{}S", frac.trim_end_matches('0')));
            }
        }
    }
    if out == "P" {
        out.push_str("T0S");
    }
    Ok(out)
}

/// PostgreSQL prints an inet with a full-length mask without the mask; a cidr always with it.
fn inet_to_string(ty: &Type, raw: &[u8]) -> Result<String, BoxError> {
    let inet = wire::inet_from_sql(raw)?;
    let full = match inet.addr() {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    if *ty == Type::INET && inet.netmask() == full {
        Ok(inet.addr().to_string())
    } else {
        Ok(format!("{}/{}", inet.addr(), inet.netmask()))
    }
}

/// The binary numeric form is base-10000 digits with a weight and a display
/// scale; printing it exactly avoids any float rounding.
fn numeric_to_string(raw: &[u8]) -> Result<String, BoxError> {
    let header = |i: usize| -> Result<u16, BoxError> {
        Ok(u16::from_be_bytes(raw.get(i..i + 2).ok_or("numeric too short")?.try_into()?))
    };
    let ndigits = header(0)? as usize;
    let weight = header(2)? as i16 as i32;
    let sign = header(4)?;
    let dscale = header(6)? as usize;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => return Err("invalid numeric sign".into()),
    }
    let digits = (0..ndigits).map(|i| header(8 + 2 * i)).collect::<Result<Vec<u16>, _>>()?;
    if digits.iter().any(|&d| d > 9999) {
        return Err("invalid numeric digit".into());
    }
    let digit_at = |pos: i32| -> u16 {
        usize::try_from(pos).ok().and_then(|p| digits.get(p).copied()).unwrap_or(0)
    };

    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for pos in 0..=weight {
            let d = digit_at(pos);
            if pos == 0 {
                out.push_str(&d.to_string());
            } else {
                out.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut fraction = String::new();
        let mut pos = weight + 1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", digit_at(pos)));
            pos += 1;
        }
        fraction.truncate(dscale);
        out.push_str(&fraction);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An int4 array on the wire with the given (length) dimensions and elements.
    fn int4_array(dims: &[i32], elements: &[i32]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(dims.len() as i32).to_be_bytes());
        v.extend_from_slice(&0i32.to_be_bytes());
        v.extend_from_slice(&23u32.to_be_bytes());
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
            v.extend_from_slice(&1i32.to_be_bytes());
        }
        for e in elements {
            v.extend_from_slice(&4i32.to_be_bytes());
            v.extend_from_slice(&e.to_be_bytes());
        }
        v
    }

    #[test]
    fn array_dimensions_must_describe_the_elements() {
        let ok = decode_array(&Type::INT4, &int4_array(&[2, 2], &[1, 2, 3, 4])).unwrap();
        assert_eq!(ok, serde_json::json!([[1, 2], [3, 4]]));
        // Outer dimensions that would loop 2^31 times around an empty one.
        for dims in [&[65536, 32768, 0][..], &[-1, 2][..], &[0][..]] {
            assert!(decode_array(&Type::INT4, &int4_array(dims, &[])).is_err(), "{dims:?}");
        }
    }

    fn numeric(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(digits.len() as u16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numeric_is_printed_exactly() {
        let cases = [
            (numeric(0, 0, 2, &[12, 3400]), "12.34"),
            (numeric(-1, 0x4000, 5, &[50]), "-0.00500"),
            (numeric(1, 0, 0, &[1, 0]), "10000"),
            (numeric(0, 0, 0, &[]), "0"),
            (numeric(0, 0xC000, 0, &[]), "NaN"),
            (numeric(-2, 0, 8, &[1]), "0.00000001"),
        ];
        for (raw, expected) in cases {
            assert_eq!(numeric_to_string(&raw).unwrap(), expected);
        }
    }

    fn interval(micros: i64, days: i32, months: i32) -> String {
        let mut v = micros.to_be_bytes().to_vec();
        v.extend_from_slice(&days.to_be_bytes());
        v.extend_from_slice(&months.to_be_bytes());
        interval_to_iso8601(&v).unwrap()
    }

    #[test]
    fn intervals_follow_postgres_iso_8601_style() {
        assert_eq!(interval(0, 0, 0), "PT0S");
        assert_eq!(interval(3_723_500_000, 3, 14), "P1Y2M3DT1H2M3.5S");
        assert_eq!(interval(-90_000_000, -1, 0), "P-1DT-1M-30S");
    }

    #[test]
    fn floats_without_json_form_become_strings() {
        assert_eq!(float(f64::NAN), Value::String("NaN".into()));
        assert_eq!(float(f64::INFINITY), Value::String("Infinity".into()));
        assert_eq!(float(f64::NEG_INFINITY), Value::String("-Infinity".into()));
        assert_eq!(float(1e6), serde_json::json!(1000000.0));
    }

    #[test]
    fn timestamps_use_rfc3339_and_keep_infinity() {
        assert_eq!(timestamp(0, true), Value::String("2000-01-01T00:00:00Z".into()));
        assert_eq!(timestamp(1_500_000, false), Value::String("2000-01-01T00:00:01.500".into()));
        assert_eq!(timestamp(i64::MAX, true), Value::String("infinity".into()));
        assert_eq!(date(-1), Value::String("1999-12-31".into()));
    }
}
