//! Which firewall carries the rules: chosen by the user, or found the way the pod's node uses.

use std::str::FromStr;

use super::iptables::Flavour;
use super::nft;
use super::rules::Family;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    IptablesLegacy,
    IptablesNft,
    Nft,
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name.trim() {
            "iptables-legacy" => Ok(Self::IptablesLegacy),
            "iptables-nft" => Ok(Self::IptablesNft),
            "nft" | "nftables" => Ok(Self::Nft),
            other => Err(format!(
                "{other:?} is not a backend (auto, iptables-legacy, iptables-nft, nft)"
            )),
        }
    }
}

impl Backend {
    pub const ALL: [Self; 3] = [Self::IptablesLegacy, Self::IptablesNft, Self::Nft];

    pub fn name(self) -> &'static str {
        match self {
            Self::IptablesLegacy => "iptables-legacy",
            Self::IptablesNft => "iptables-nft",
            Self::Nft => "nft",
        }
    }

    pub fn flavour(self) -> Option<Flavour> {
        match self {
            Self::IptablesLegacy => Some(Flavour::Legacy),
            Self::IptablesNft => Some(Flavour::Nft),
            Self::Nft => None,
        }
    }

    pub fn available(self) -> bool {
        match self.flavour() {
            Some(flavour) => flavour.available(),
            None => nft::available(),
        }
    }

    pub fn has_weft_rules(self) -> bool {
        match self.flavour() {
            Some(flavour) => flavour.has_weft_rules(Family::V4),
            None => nft::has_weft_table(),
        }
    }

    /// The backend to use when none is named: where Weft's rules already are (so a second run
    /// replaces them); else the iptables whose tables already hold rules (two iptables
    /// flavours in one kernel race each other); else iptables-nft, iptables-legacy, nft,
    /// whichever is installed first.
    pub fn detect() -> Result<Self, String> {
        if let Some(backend) = Self::ALL.into_iter().find(|b| b.has_weft_rules()) {
            return Ok(backend);
        }
        for (backend, flavour) in [
            (Self::IptablesLegacy, Flavour::Legacy),
            (Self::IptablesNft, Flavour::Nft),
        ] {
            if flavour.has_rules(Family::V4) {
                return Ok(backend);
            }
        }
        [Self::IptablesNft, Self::IptablesLegacy, Self::Nft]
            .into_iter()
            .find(|b| b.available())
            .ok_or_else(|| {
                "no firewall found: install iptables (legacy or nft) or nftables".to_string()
            })
    }
}
