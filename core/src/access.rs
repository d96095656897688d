//! Control-plane access (DESIGN §12): who may do what through the HTTP API.
//!
//! Users are named by tokens (the local admin token of each control plane,
//! or user tokens signed by the global). What a user may do comes from
//! [`AccessRole`]s (rules: types, names, mesh, access) bound to users and
//! groups by [`AccessRoleBinding`]s — the shape of Kong Mesh RBAC. Both are
//! global resources synced to zones, so every control plane decides with
//! the same rules from its own replica.
//!
//! [`Rbac`] is the compiled form: built once per change of the roles or
//! bindings, asked per request with [`Rbac::allows`]. Everything is denied
//! unless a bound rule allows it, with one exception that keeps a fresh
//! control plane usable: while no binding exists at all, the admin group is
//! allowed everything (the global and standalone zones create the `admin`
//! role and binding at first start; a federated zone receives them).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Causes, FieldPath};
use crate::names::check_subdomain;
use crate::spec::Spec;
use crate::types::ResourceType;

/// The group of administrators: the local admin token carries it.
pub const ADMIN_GROUP: &str = "mesh-system:admin";
/// The user name of the local admin token.
pub const ADMIN_USER: &str = "mesh-system:admin";
/// The group every authenticated caller is in.
pub const AUTHENTICATED_GROUP: &str = "mesh-system:authenticated";
/// Names and groups with this prefix are Meridian's own.
pub const RESERVED_PREFIX: &str = "mesh-system:";
/// The role and the binding created at first start.
pub const DEFAULT_ADMIN_ROLE: &str = "admin";
/// See [`DEFAULT_ADMIN_ROLE`].
pub const DEFAULT_ADMIN_BINDING: &str = "admin";
/// The `iss` of user tokens.
pub const USER_TOKEN_ISSUER: &str = "meridian-users";
/// The longest user or group name.
pub const MAX_SUBJECT_NAME: usize = 253;

/// One permission. Resource actions apply to a type, a mesh and a name;
/// token actions to a mesh (dataplane tokens) or to nothing in particular.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Access {
    Create,
    Update,
    Delete,
    /// Read (get, list, overviews, insights).
    View,
    /// Read `Secret`s (they hold CA keys); `View` alone does not.
    ViewSecrets,
    /// A dataplane's generated configuration and matched policies.
    ViewConfigDump,
    /// Audit entries of the types and meshes the rule covers.
    ViewAudit,
    /// Issue, revoke dataplane tokens of the rule's mesh.
    GenerateDataplaneToken,
    /// Issue, revoke zone tokens (global) and zone ingress tokens (zone).
    /// Kong Mesh's `GENERATE_ZONE_CP_TOKEN` is read as this.
    #[serde(alias = "GENERATE_ZONE_CP_TOKEN")]
    GenerateZoneToken,
    /// Issue, revoke user tokens.
    GenerateUserToken,
}

impl Access {
    /// Every permission.
    pub const ALL: [Access; 10] = [
        Access::Create,
        Access::Update,
        Access::Delete,
        Access::View,
        Access::ViewSecrets,
        Access::ViewConfigDump,
        Access::ViewAudit,
        Access::GenerateDataplaneToken,
        Access::GenerateZoneToken,
        Access::GenerateUserToken,
    ];

    /// The name as written in roles (`GENERATE_ZONE_TOKEN`).
    pub fn name(self) -> &'static str {
        match self {
            Access::Create => "CREATE",
            Access::Update => "UPDATE",
            Access::Delete => "DELETE",
            Access::View => "VIEW",
            Access::ViewSecrets => "VIEW_SECRETS",
            Access::ViewConfigDump => "VIEW_CONFIG_DUMP",
            Access::ViewAudit => "VIEW_AUDIT",
            Access::GenerateDataplaneToken => "GENERATE_DATAPLANE_TOKEN",
            Access::GenerateZoneToken => "GENERATE_ZONE_TOKEN",
            Access::GenerateUserToken => "GENERATE_USER_TOKEN",
        }
    }

    /// Whether the rule's `types` and `names` apply (resource actions), or
    /// only its `mesh` (token actions).
    fn is_about_resources(self) -> bool {
        !matches!(
            self,
            Access::GenerateDataplaneToken | Access::GenerateZoneToken | Access::GenerateUserToken
        )
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One rule of a role: `access` on resources of `types` named `names` in
/// `mesh`. An empty list or an absent mesh means "any".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    pub access: Vec<Access>,
    /// Kong Mesh's per-policy conditions: accepted by the decoder only to be
    /// refused with a clear message (never ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Value>,
}

/// A named set of rules (`type: AccessRole`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessRole {
    pub rules: Vec<AccessRule>,
}

impl AccessRole {
    /// The role of [`DEFAULT_ADMIN_ROLE`]: everything, everywhere.
    pub fn admin() -> Self {
        AccessRole {
            rules: vec![AccessRule {
                types: Vec::new(),
                names: Vec::new(),
                mesh: None,
                access: Access::ALL.to_vec(),
                when: None,
            }],
        }
    }
}

impl Spec for AccessRole {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        let rules = path.field("rules");
        if self.rules.is_empty() {
            causes.add(&rules, "must have at least one rule");
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let p = rules.index(i);
            for (j, ty) in rule.types.iter().enumerate() {
                if ty.parse::<ResourceType>().is_err() {
                    causes.add(
                        &p.field("types").index(j),
                        format!("unknown resource type {ty:?} (a type name such as MeshTimeout)"),
                    );
                }
            }
            for (j, name) in rule.names.iter().enumerate() {
                if let Err(e) = check_subdomain(name) {
                    causes.add(&p.field("names").index(j), e);
                }
            }
            if let Some(mesh) = &rule.mesh {
                if let Err(e) = crate::names::check_label(mesh) {
                    causes.add(&p.field("mesh"), e);
                }
            }
            if rule.access.is_empty() {
                causes.add(&p.field("access"), "must list at least one permission");
            }
            if rule.when.is_some() {
                causes.add(
                    &p.field("when"),
                    "per-policy conditions are not supported by Meridian; narrow the rule with types, names and mesh",
                );
            }
        }
    }
}

/// Who a binding names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SubjectKind {
    User,
    Group,
}

/// A user or a group.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    #[serde(rename = "type")]
    pub kind: SubjectKind,
    pub name: String,
}

/// Binds subjects to roles (`type: AccessRoleBinding`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessRoleBinding {
    pub subjects: Vec<Subject>,
    pub roles: Vec<String>,
}

impl AccessRoleBinding {
    /// The binding of [`DEFAULT_ADMIN_BINDING`]: the admin group to the admin role.
    pub fn admin() -> Self {
        AccessRoleBinding {
            subjects: vec![Subject {
                kind: SubjectKind::Group,
                name: ADMIN_GROUP.into(),
            }],
            roles: vec![DEFAULT_ADMIN_ROLE.into()],
        }
    }
}

impl Spec for AccessRoleBinding {
    fn validate(&self, path: &FieldPath, causes: &mut Causes) {
        let subjects = path.field("subjects");
        if self.subjects.is_empty() {
            causes.add(&subjects, "must name at least one user or group");
        }
        for (i, s) in self.subjects.iter().enumerate() {
            if let Err(e) = check_subject_name(&s.name) {
                causes.add(&subjects.index(i).field("name"), e);
            }
        }
        let roles = path.field("roles");
        if self.roles.is_empty() {
            causes.add(&roles, "must name at least one AccessRole");
        }
        for (i, r) in self.roles.iter().enumerate() {
            if let Err(e) = check_subdomain(r) {
                causes.add(&roles.index(i), e);
            }
        }
    }
}

/// A user or group name: 1 to [`MAX_SUBJECT_NAME`] characters of letters,
/// digits and `.-_@:+` (e-mail addresses and `mesh-system:` names fit).
pub fn check_subject_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_SUBJECT_NAME {
        return Err(format!("must be at most {MAX_SUBJECT_NAME} characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@' | ':' | '+')))
    {
        return Err(format!(
            "{name:?} holds {c:?}; names are letters, digits and . - _ @ : +"
        ));
    }
    Ok(())
}

/// What a user token says about its holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserClaims {
    /// Always [`USER_TOKEN_ISSUER`].
    pub iss: String,
    /// The user's name.
    pub sub: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The token's id, the handle for revoking it.
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    /// Its groups, [`AUTHENTICATED_GROUP`] included.
    pub groups: Vec<String>,
    /// The id of the token it presented (`None` for the local admin token).
    pub token_id: Option<String>,
}

impl Principal {
    /// The holder of the local admin token.
    pub fn admin() -> Self {
        Principal {
            name: ADMIN_USER.into(),
            groups: vec![ADMIN_GROUP.into(), AUTHENTICATED_GROUP.into()],
            token_id: None,
        }
    }

    /// The holder of a verified user token.
    pub fn user(claims: &UserClaims) -> Self {
        let mut groups = claims.groups.clone();
        if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            groups.push(AUTHENTICATED_GROUP.into());
        }
        Principal {
            name: claims.sub.clone(),
            groups,
            token_id: Some(claims.jti.clone()),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == ADMIN_GROUP)
    }
}

/// What an action is about. `mesh` of a `Mesh` resource is its own name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target<'a> {
    pub kind: Option<ResourceType>,
    pub mesh: Option<&'a str>,
    pub name: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// A resource (or a would-be resource) of `kind`.
    pub fn resource(kind: ResourceType, mesh: Option<&'a str>, name: &'a str) -> Self {
        let mesh = if kind == ResourceType::Mesh { Some(name) } else { mesh };
        Target {
            kind: Some(kind),
            mesh,
            name: Some(name),
        }
    }

    /// A token action in `mesh` (dataplane tokens) or anywhere.
    pub fn token(mesh: Option<&'a str>) -> Self {
        Target {
            kind: None,
            mesh,
            name: None,
        }
    }

    /// [`Target::token`] naming what the token is for (for the audit log).
    pub fn named_token(mesh: Option<&'a str>, name: Option<&'a str>) -> Self {
        Target { kind: None, mesh, name }
    }
}

#[derive(Debug)]
struct Rule {
    /// Empty: any type.
    types: Vec<ResourceType>,
    names: BTreeSet<String>,
    mesh: Option<String>,
    access: BTreeSet<Access>,
}

impl Rule {
    fn compile(rule: &AccessRule) -> Self {
        Rule {
            // Unknown names cannot be stored (validation); skipping one here
            // can only narrow the rule, never widen it.
            types: rule.types.iter().filter_map(|t| t.parse().ok()).collect(),
            names: rule.names.iter().cloned().collect(),
            mesh: rule.mesh.clone(),
            access: rule
                .access
                .iter()
                .copied()
                // Who may write a resource may read it (Kong Mesh roles name
                // writes only: reads are open there).
                .chain(
                    rule.access
                        .iter()
                        .any(|a| matches!(a, Access::Create | Access::Update | Access::Delete))
                        .then_some(Access::View),
                )
                .collect(),
        }
    }

    fn allows(&self, access: Access, target: &Target<'_>) -> bool {
        if !self.access.contains(&access) {
            return false;
        }
        if let Some(m) = &self.mesh {
            if target.mesh != Some(m.as_str()) {
                return false;
            }
        }
        if !access.is_about_resources() {
            return true;
        }
        if !self.types.is_empty() && !target.kind.is_some_and(|k| self.types.contains(&k)) {
            return false;
        }
        if !self.names.is_empty() && !target.name.is_some_and(|n| self.names.contains(n)) {
            return false;
        }
        true
    }

    fn is_unrestricted(&self) -> bool {
        self.types.is_empty()
            && self.names.is_empty()
            && self.mesh.is_none()
            && Access::ALL.iter().all(|a| self.access.contains(a))
    }
}

/// The compiled roles and bindings of one moment.
#[derive(Debug, Default)]
pub struct Rbac {
    /// Rules bound to each subject.
    bound: HashMap<Subject, Vec<Arc<Rule>>>,
    bindings: usize,
}

impl Rbac {
    /// Compiles `roles` (by name) and `bindings`. A binding naming a role
    /// that does not exist grants nothing for that role.
    pub fn build<'a>(
        roles: impl IntoIterator<Item = (&'a str, &'a AccessRole)>,
        bindings: impl IntoIterator<Item = &'a AccessRoleBinding>,
    ) -> Self {
        let compiled: BTreeMap<&str, Vec<Arc<Rule>>> = roles
            .into_iter()
            .map(|(name, role)| (name, role.rules.iter().map(|r| Arc::new(Rule::compile(r))).collect()))
            .collect();
        let mut bound: HashMap<Subject, Vec<Arc<Rule>>> = HashMap::new();
        let mut count = 0;
        for binding in bindings {
            count += 1;
            for subject in &binding.subjects {
                let rules = bound.entry(subject.clone()).or_default();
                for role in &binding.roles {
                    if let Some(r) = compiled.get(role.as_str()) {
                        rules.extend(r.iter().cloned());
                    }
                }
            }
        }
        Rbac { bound, bindings: count }
    }

    fn rules_of<'s>(&'s self, p: &'s Principal) -> impl Iterator<Item = &'s Arc<Rule>> + 's {
        let user = Subject {
            kind: SubjectKind::User,
            name: p.name.clone(),
        };
        let groups = p.groups.iter().map(|g| Subject {
            kind: SubjectKind::Group,
            name: g.clone(),
        });
        std::iter::once(user)
            .chain(groups)
            .filter_map(|s| self.bound.get(&s))
            .flatten()
    }

    /// Whether `p` may do `access` on `target`.
    pub fn allows(&self, p: &Principal, access: Access, target: &Target<'_>) -> bool {
        if self.bindings == 0 && p.is_admin() {
            return true;
        }
        self.rules_of(p).any(|r| r.allows(access, target))
    }

    /// Whether the admin group is allowed everything, everywhere: the state
    /// every change of roles and bindings must keep (or no binding at all,
    /// where the admin group is allowed everything anyway).
    pub fn admins_keep_full_access(&self) -> bool {
        if self.bindings == 0 {
            return true;
        }
        let group = Subject {
            kind: SubjectKind::Group,
            name: ADMIN_GROUP.into(),
        };
        self.bound
            .get(&group)
            .is_some_and(|rules| rules.iter().any(|r| r.is_unrestricted()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::check;
    use serde_json::json;

    fn role(v: Value) -> AccessRole {
        serde_json::from_value(check::<AccessRole>(v, &FieldPath::root()).unwrap()).unwrap()
    }

    fn binding(v: Value) -> AccessRoleBinding {
        serde_json::from_value(check::<AccessRoleBinding>(v, &FieldPath::root()).unwrap()).unwrap()
    }

    fn user(name: &str, groups: &[&str]) -> Principal {
        Principal::user(&UserClaims {
            iss: USER_TOKEN_ISSUER.into(),
            sub: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            jti: "t".into(),
            iat: 0,
            exp: 1,
        })
    }

    fn team_rbac() -> Rbac {
        let admin = AccessRole::admin();
        let team_a = role(json!({"rules": [
            {"mesh": "team-a", "access": ["CREATE", "UPDATE", "DELETE", "VIEW"]},
            {"types": ["Mesh"], "names": ["team-a"], "access": ["VIEW"]},
        ]}));
        let timeouts = role(json!({"rules": [
            {"types": ["MeshTimeout"], "names": ["only-this"], "mesh": "team-b", "access": ["UPDATE"]},
        ]}));
        let b_admin = AccessRoleBinding::admin();
        let b_team = binding(json!({"subjects": [{"type": "Group", "name": "team-a"}], "roles": ["team-a"]}));
        let b_user = binding(
            json!({"subjects": [{"type": "User", "name": "bob@example.com"}], "roles": ["timeouts", "missing"]}),
        );
        Rbac::build(
            [("admin", &admin), ("team-a", &team_a), ("timeouts", &timeouts)],
            [&b_admin, &b_team, &b_user],
        )
    }

    #[test]
    fn team_rules_reach_their_mesh_only() {
        let rbac = team_rbac();
        let alice = user("alice", &["team-a"]);
        let t = |mesh| Target::resource(ResourceType::MeshTimeout, Some(mesh), "t1");
        assert!(rbac.allows(&alice, Access::Create, &t("team-a")));
        assert!(!rbac.allows(&alice, Access::Create, &t("team-b")));
        assert!(!rbac.allows(&alice, Access::ViewSecrets, &t("team-a")));
        // The Mesh resource team-a is "in" mesh team-a.
        assert!(rbac.allows(
            &alice,
            Access::Update,
            &Target::resource(ResourceType::Mesh, None, "team-a")
        ));
        assert!(!rbac.allows(
            &alice,
            Access::Update,
            &Target::resource(ResourceType::Mesh, None, "team-b")
        ));
        // Global types are in no mesh: a mesh rule does not reach them.
        assert!(!rbac.allows(&alice, Access::View, &Target::resource(ResourceType::Zone, None, "z")));
        // Token actions: mesh only.
        assert!(!rbac.allows(&alice, Access::GenerateDataplaneToken, &Target::token(Some("team-a"))));
    }

    #[test]
    fn names_and_types_narrow() {
        let rbac = team_rbac();
        let bob = user("bob@example.com", &[]);
        let t = |name| Target::resource(ResourceType::MeshTimeout, Some("team-b"), name);
        assert!(rbac.allows(&bob, Access::Update, &t("only-this")));
        assert!(!rbac.allows(&bob, Access::Update, &t("other")));
        assert!(!rbac.allows(&bob, Access::Create, &t("only-this")));
        assert!(!rbac.allows(
            &bob,
            Access::Update,
            &Target::resource(ResourceType::MeshRetry, Some("team-b"), "only-this")
        ));
        // A user bound as a user, not as a group of that name.
        assert!(!rbac.allows(&user("x", &["bob@example.com"]), Access::Update, &t("only-this")));
    }

    #[test]
    fn admin_and_lockout() {
        let rbac = team_rbac();
        assert!(rbac.allows(&Principal::admin(), Access::ViewSecrets, &Target::token(None)));
        assert!(rbac.admins_keep_full_access());
        let team_a = role(json!({"rules": [{"access": ["VIEW"]}]}));
        let b = binding(json!({"subjects": [{"type": "Group", "name": ADMIN_GROUP}], "roles": ["viewer"]}));
        let locked = Rbac::build([("viewer", &team_a)], [&b]);
        assert!(!locked.admins_keep_full_access());
        assert!(!locked.allows(&Principal::admin(), Access::Create, &Target::token(None)));
        // No binding at all: admins may do everything, nobody else anything.
        let empty = Rbac::build([], []);
        assert!(empty.admins_keep_full_access());
        assert!(empty.allows(&Principal::admin(), Access::Delete, &Target::token(None)));
        assert!(!empty.allows(&user("alice", &["team-a"]), Access::View, &Target::token(None)));
    }

    #[test]
    fn kong_mesh_roles_read_as_written() {
        let r = role(
            json!({"rules": [{"types": ["MeshTimeout"], "mesh": "m", "access": ["CREATE", "GENERATE_ZONE_CP_TOKEN"]}]}),
        );
        assert_eq!(r.rules[0].access, [Access::Create, Access::GenerateZoneToken]);
        let b = binding(json!({"subjects": [{"type": "Group", "name": "g"}], "roles": ["r"]}));
        let rbac = Rbac::build([("r", &r)], [&b]);
        let u = user("u", &["g"]);
        let t = Target::resource(ResourceType::MeshTimeout, Some("m"), "t");
        assert!(rbac.allows(&u, Access::View, &t), "writers read what they write");
        assert!(!rbac.allows(
            &u,
            Access::ViewSecrets,
            &Target::resource(ResourceType::Secret, Some("m"), "s")
        ));
        let err = check::<AccessRole>(json!({"rules": [{"access": ["VIEW_STATS"]}]}), &FieldPath::root())
            .unwrap_err()
            .to_string();
        assert!(err.contains("rules[0].access[0]"), "{err}");
    }

    #[test]
    fn validation_names_fields() {
        let err = check::<AccessRole>(
            json!({"rules": [{"types": ["NoSuch"], "names": ["Bad_Name"], "mesh": "x.y", "access": [], "when": []}]}),
            &FieldPath::root(),
        )
        .unwrap_err()
        .to_string();
        for field in [
            "rules[0].types[0]",
            "rules[0].names[0]",
            "rules[0].mesh",
            "rules[0].access",
            "rules[0].when",
        ] {
            assert!(err.contains(field), "{field} missing from {err}");
        }
        let err = check::<AccessRole>(json!({"rules": [{"access": ["FLY"]}]}), &FieldPath::root())
            .unwrap_err()
            .to_string();
        assert!(err.contains("rules[0].access[0]"), "{err}");
        let err = check::<AccessRoleBinding>(
            json!({"subjects": [{"type": "Team", "name": "a"}], "roles": ["r"]}),
            &FieldPath::root(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("subjects[0].type"), "{err}");
        let err = check::<AccessRoleBinding>(json!({"subjects": [], "roles": []}), &FieldPath::root())
            .unwrap_err()
            .to_string();
        assert!(err.contains("subjects") && err.contains("roles"), "{err}");
        assert!(check_subject_name("a b").is_err());
        assert!(check_subject_name("dev.team+1@example.com").is_ok());
    }
}
