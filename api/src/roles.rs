//! Who may call what: the sets of roles the handlers and read endpoints
//! require, declared once (the roles themselves are the domain's `Role`).

use paystream_domain::api_key::Role;

pub const ADMIN: &[Role] = &[Role::Admin];
pub const MERCHANT: &[Role] = &[Role::Merchant];
pub const ADMIN_OR_MERCHANT: &[Role] = &[Role::Admin, Role::Merchant];
/// Every role.
pub const EVERYONE: &[Role] = Role::ALL;
/// Review decisions and the analysts' reads.
pub const ANALYSTS: &[Role] = &[Role::Admin, Role::Analyst];
pub const DASHBOARD_READERS: &[Role] = &[Role::Admin, Role::Analyst, Role::Merchant];
/// Every role but merchants: the journal, the merchant list.
pub const STAFF: &[Role] = &[Role::Admin, Role::Analyst, Role::Auditor];
