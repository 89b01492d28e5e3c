-- Version 10: a role an admin set is final. Until an admin sets a user's role, the token's
-- admin claim (or role = 'admin') makes the user an admin; once set (PATCH
-- /admin/users/{id}), users.role alone decides, so an admin from the identity provider's
-- claim can be demoted here (docs/api.md, "Admin").
ALTER TABLE users ADD COLUMN role_set_by_admin boolean NOT NULL DEFAULT false;
