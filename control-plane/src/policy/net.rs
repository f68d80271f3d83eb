//! Ports, addresses and networks as manifests write them, checked once when a manifest is read
//! and kept typed from then on. They are shown back in canonical form (`fd00:0::1` as
//! `fd00::1`).

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU16;
use std::str::FromStr;

use ipnet::IpNet;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A TCP port: 1–65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(NonZeroU16);

impl Port {
    /// `None` for 0.
    pub fn new(port: u16) -> Option<Self> {
        NonZeroU16::new(port).map(Self)
    }

    /// A port given as a wider number (the discovery protocol's `uint32`).
    pub fn from_u32(port: u32) -> Option<Self> {
        u16::try_from(port).ok().and_then(Self::new)
    }

    /// The port number.
    pub fn get(self) -> u16 {
        self.0.get()
    }
}

impl From<Port> for u32 {
    fn from(port: Port) -> u32 {
        u32::from(port.get())
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.get())
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let number = i64::deserialize(deserializer)?;
        u16::try_from(number)
            .ok()
            .and_then(Self::new)
            .ok_or_else(|| D::Error::custom(format!("{number} is not a port (1-65535)")))
    }
}

inline_json_schema!(Port, {"type": "integer", "minimum": 1, "maximum": 65535});

/// An IP address, v4 or v6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address(IpAddr);

impl Address {
    /// The address.
    pub fn ip(self) -> IpAddr {
        self.0
    }
}

impl From<IpAddr> for Address {
    fn from(ip: IpAddr) -> Self {
        Self(ip)
    }
}

impl FromStr for Address {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.parse()
            .map(Self)
            .map_err(|_| format!("{text:?} is not an IP address"))
    }
}

inline_json_schema!(Address, {"type": "string", "description": "An IPv4 or IPv6 address."});

/// A network in CIDR notation, v4 or v6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(IpNet);

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.parse()
            .map(Self)
            .map_err(|_| format!("{text:?} is not a CIDR such as 10.0.0.0/8 or fd00::/8"))
    }
}

inline_json_schema!(Cidr, {"type": "string", "format": "cidr"});

/// Written and read as text: `Display` out, `FromStr` in, the parse error as serde's message.
macro_rules! text_serde {
    ($($type:ty),*) => {$(
        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer)?
                    .parse()
                    .map_err(D::Error::custom)
            }
        }
    )*};
}

text_serde!(Address, Cidr);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_addresses_and_networks_read_back_as_written_and_refuse_what_they_are_not() {
        let port: Port = serde_json::from_value(serde_json::json!(8080)).unwrap();
        assert_eq!(serde_json::to_value(port).unwrap(), serde_json::json!(8080));
        for bad in [0, 65536, -1] {
            let error = serde_json::from_value::<Port>(serde_json::json!(bad)).unwrap_err();
            assert_eq!(error.to_string(), format!("{bad} is not a port (1-65535)"));
        }
        for text in ["10.0.0.1", "fd00::1"] {
            let address: Address = serde_json::from_value(serde_json::json!(text)).unwrap();
            assert_eq!(
                serde_json::to_value(address).unwrap(),
                serde_json::json!(text)
            );
        }
        let error = serde_json::from_value::<Address>(serde_json::json!("api")).unwrap_err();
        assert_eq!(error.to_string(), "\"api\" is not an IP address");
        let cidr: Cidr = serde_json::from_value(serde_json::json!("10.1.0.0/16")).unwrap();
        assert_eq!(cidr.to_string(), "10.1.0.0/16");
        let error = serde_json::from_value::<Cidr>(serde_json::json!("10.0.0.0/33")).unwrap_err();
        assert!(error.to_string().contains("is not a CIDR"), "{error}");
    }
}
