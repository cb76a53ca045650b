/*-------------------------------------------------------------------------
 *
 * idem_tenant.c
 *	  Tenant confinement: roles bound to the scopes they may use.
 *
 * An administrator binds a role to one or more scopes with idem_confine().
 * A confined role (the current user, as SET ROLE leaves it) may reserve,
 * commit, release, get and purge only in those scopes; for any other scope
 * it gets "permission denied", whether or not that scope holds keys, so it
 * cannot learn that a scope exists.  Roles without bindings are not
 * confined.
 *
 * The bindings of the current user are read once and kept until the
 * binding table changes (relcache invalidation), so an unconfined role,
 * the common case, pays one comparison per call.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "idempotency.h"

static struct
{
	bool		valid;
	Oid			userid;
	bool		confined;
	int			nscopes;
	char	  **scopes;			/* in TopMemoryContext */
	Oid			relid;			/* the binding table, for invalidation */
} tenant;

static bool callback_registered = false;

static void
invalidate_tenant(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == tenant.relid)
		tenant.valid = false;
}

static void
load_bindings(Oid userid)
{
	char	  **scopes;
	int			n;

	for (int i = 0; i < tenant.nscopes; i++)
		pfree(tenant.scopes[i]);
	if (tenant.scopes)
		pfree(tenant.scopes);
	tenant.scopes = NULL;
	tenant.nscopes = 0;
	tenant.valid = false;

	scopes = idem_storage_confined_scopes(userid, &n, &tenant.relid);
	if (n > 0)
	{
		tenant.scopes = MemoryContextAlloc(TopMemoryContext, sizeof(char *) * n);
		for (int i = 0; i < n; i++)
			tenant.scopes[i] = MemoryContextStrdup(TopMemoryContext, scopes[i]);
		tenant.nscopes = n;
	}

	tenant.userid = userid;
	tenant.confined = n > 0;
	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(invalidate_tenant, (Datum) 0);
		callback_registered = true;
	}
	tenant.valid = true;
}

static void
refresh(void)
{
	Oid			userid = GetUserId();

	if (!tenant.valid || tenant.userid != userid)
		load_bindings(userid);
}

/*
 * Raises "permission denied" unless the current user may use scope.
 */
void
idem_check_scope(const char *scope)
{
	refresh();
	if (!tenant.confined)
		return;
	for (int i = 0; i < tenant.nscopes; i++)
		if (strcmp(tenant.scopes[i], scope) == 0)
			return;
	user_error(
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for idempotency scope \"%s\"", scope),
			 errdetail("Role \"%s\" is confined to its own scopes.",
					   GetUserNameFromId(GetUserId(), false))));
}

/*
 * The scopes the current user is confined to, as a text[] datum, or NULL
 * when it is not confined.
 */
ArrayType *
idem_confined_scopes(void)
{
	Datum	   *elems;
	ArrayType  *arr;

	refresh();
	if (!tenant.confined)
		return NULL;
	elems = palloc(sizeof(Datum) * tenant.nscopes);
	for (int i = 0; i < tenant.nscopes; i++)
		elems[i] = CStringGetTextDatum(tenant.scopes[i]);
	arr = construct_array(elems, tenant.nscopes, TEXTOID, -1, false,
						  TYPALIGN_INT);
	pfree(elems);
	return arr;
}

PG_FUNCTION_INFO_V1(idem_confinement_changed);

/*
 * Statement trigger on idem_confinement: every backend reads the bindings
 * again once the change commits.  (Row changes send no invalidation of
 * their own.)
 */
Datum
idem_confinement_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "idem_confinement_changed: not called by trigger manager");
	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigdata->tg_relation));
	PG_RETURN_POINTER(NULL);
}
