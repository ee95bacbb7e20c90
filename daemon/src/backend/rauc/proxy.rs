//! A typed proxy for RAUC's installer interface (`de.pengutronix.rauc.Installer`, bus name `de.pengutronix.rauc`,
//! object `/`), as RAUC ships it in `de.pengutronix.rauc.Installer.xml`.
//!
//! Only what both RAUC 1.8 (Debian 12) and newer versions have: no `InspectBundle`, no `GetArtifactStatus`.

use std::collections::HashMap;

use zbus::{OwnedVariant as OwnedValue, Variant as Value};

pub const RAUC_BUS_NAME: &str = "de.pengutronix.rauc";

/// A slot as `GetSlotStatus` lists it: its name (`rootfs.1`) and its properties (`bootname`, `state`,
/// `boot-status`, `bundle.version`, ...).
pub type SlotStatus = (String, HashMap<String, OwnedValue>);

#[zbus::proxy(interface = "de.pengutronix.rauc.Installer", default_service = "de.pengutronix.rauc", default_path = "/")]
pub trait Installer {
    /// Starts installing `source`; the result comes with `Completed` (and `LastError`). `args` keys RAUC does not
    /// know are refused with "Unsupported key: <key>" (RAUC 1.8 has no `transaction-id`).
    fn install_bundle(&self, source: &str, args: HashMap<&str, Value<'_>>) -> zbus::Result<()>;

    /// `state` is `good`, `bad` or `active`; `slot_identifier` is `booted`, `other` or a slot name. Returns the slot
    /// that was marked and RAUC's message.
    fn mark(&self, state: &str, slot_identifier: &str) -> zbus::Result<(String, String)>;

    fn get_slot_status(&self) -> zbus::Result<Vec<SlotStatus>>;

    /// The slot the bootloader will boot next.
    fn get_primary(&self) -> zbus::Result<String>;

    /// `idle` or `installing`.
    #[zbus(property)]
    fn operation(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn last_error(&self) -> zbus::Result<String>;

    /// Percent, message, nesting depth.
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<(i32, String, i32)>;

    #[zbus(property)]
    fn compatible(&self) -> zbus::Result<String>;

    /// The boot name of the slot the system runs from.
    #[zbus(property)]
    fn boot_slot(&self) -> zbus::Result<String>;

    /// An installation ended: 0 for success.
    #[zbus(signal)]
    fn completed(&self, result: i32) -> zbus::Result<()>;
}

/// A string property of a slot, if it has it.
pub fn slot_str(slot: &SlotStatus, key: &str) -> Option<String> {
    slot.1.get(key).and_then(|v| String::try_from(v.try_clone().ok()?).ok())
}
