/*
 * Who is connected: the Cedalo inspect API ($CONTROL/cedalo/inspect/v1) on
 * open-source mosquitto, with the field names of Pro Mosquitto's inspect plugin.
 *
 *   listClients {verbose, count, offset} -> {"totalCount": N, "clients": [...]}
 *   getClient {clientid}                 -> the client's fields, or "Client not found"
 *
 * and an event on $CONTROL/cedalo/inspect/v1/events whenever a client connects or
 * disconnects.
 *
 * How clients are seen:
 *   - mosquitto 2.1: MOSQ_EVT_CONNECT, after the broker accepted the client.
 *   - mosquitto 2.0 has no connect event. MOSQ_EVT_BASIC_AUTH is the only call a plugin
 *     gets for a connecting client, and comes *before* the other plugins decide. The
 *     callback defers (never decides) and keeps the client as "pending". A client
 *     refused after that is disconnected at once (2.0's handle_connect returns the
 *     error, the loop disconnects it before doing anything else) and reaches
 *     MOSQ_EVT_DISCONNECT with no client id (2.0 clears it on refusal): the pending
 *     client is dropped and never listed. Otherwise the next event of any kind
 *     (including MOSQ_EVT_TICK, every loop iteration) confirms it as connected.
 *     On a reload (MOSQ_EVT_RELOAD, until the next tick) 2.0 checks every session
 *     again, offline persistent ones included: those calls are not connects.
 *   - Both: MOSQ_EVT_DISCONNECT. 2.1 sends it only for a client whose session ends
 *     with the connection; a client leaving a persistent session behind (clean
 *     session false, or an MQTT 5 session expiry interval) gets MOSQ_EVT_CLIENT_OFFLINE
 *     instead, and is as disconnected for the inspect API. A client is matched by its connection (the broker's
 *     struct mosquitto), not only by id: when a client takes over its id, the broker
 *     disconnects the old connection after the new one was seen, and that must not
 *     mark the new one disconnected.
 *
 * Memory: one record per connected client, plus at most max_disconnected_clients
 * disconnected ones (the oldest disconnected are forgotten first).
 *
 * SPDX-License-Identifier: Apache-2.0
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "mmc_plugin.h"

#define INSPECT_TOPIC "$CONTROL/cedalo/inspect/v1"
#define INSPECT_RESPONSE_TOPIC INSPECT_TOPIC "/response"
#define INSPECT_EVENTS_TOPIC INSPECT_TOPIC "/events"
#define MAX_DISCONNECTED_DEFAULT 1000
#define INITIAL_BUCKETS 64

struct in_client {
	struct in_client *hnext;          /* hash chain */
	struct in_client *prev, *next;    /* listing order: first seen first */
	struct in_client *dprev, *dnext;  /* disconnected ones, oldest disconnect first */
	const struct mosquitto *conn;     /* the connection, NULL once disconnected */
	char *clientid;
	char *username;
	char *address;
	int protocol;
	int protocol_version;
	int keepalive;
	bool clean_session;
	long long last_connect;           /* ms since the epoch */
	long long last_disconnect;        /* ms since the epoch, -1: never */
};

struct in_state {
	bool enabled;
	struct in_client **buckets;
	size_t bucket_count;
	size_t count;
	struct in_client *head, *tail;
	struct in_client *dhead, *dtail;
	size_t disconnected;
	size_t max_disconnected;
#ifndef MMC_BROKER_2_1
	const struct mosquitto *pending;  /* seen by basic auth, not yet confirmed */
	long long pending_at;
	bool reloading;                   /* from the reload event to the next tick */
#endif
};

static struct in_state in;

/* ------------------------------------------------------------------ records */

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static size_t hash_id(const char *s)
{
	size_t h = 14695981039346656037ULL;

	while(*s){
		h = (h ^ (unsigned char)*s++) * 1099511628211ULL;
	}
	return h;
}

static struct in_client *find(const char *clientid)
{
	struct in_client *c;

	if(in.buckets == NULL) return NULL;
	for(c = in.buckets[hash_id(clientid) & (in.bucket_count - 1)]; c; c = c->hnext){
		if(!strcmp(c->clientid, clientid)) return c;
	}
	return NULL;
}

static bool grow(void)
{
	size_t n = in.bucket_count ? in.bucket_count * 2 : INITIAL_BUCKETS;
	struct in_client **buckets = calloc(n, sizeof(*buckets));
	struct in_client *c, *next;
	size_t i, slot;

	if(buckets == NULL) return false;
	for(i = 0; i < in.bucket_count; i++){
		for(c = in.buckets[i]; c; c = next){
			next = c->hnext;
			slot = hash_id(c->clientid) & (n - 1);
			c->hnext = buckets[slot];
			buckets[slot] = c;
		}
	}
	free(in.buckets);
	in.buckets = buckets;
	in.bucket_count = n;
	return true;
}

static void disconnected_unlink(struct in_client *c)
{
	if(c->dprev) c->dprev->dnext = c->dnext; else in.dhead = c->dnext;
	if(c->dnext) c->dnext->dprev = c->dprev; else in.dtail = c->dprev;
	c->dprev = c->dnext = NULL;
	in.disconnected--;
}

static void free_client(struct in_client *c)
{
	free(c->clientid);
	free(c->username);
	free(c->address);
	free(c);
}

/* Forget a record entirely. */
static void forget(struct in_client *c)
{
	struct in_client **link = &in.buckets[hash_id(c->clientid) & (in.bucket_count - 1)];

	while(*link != c) link = &(*link)->hnext;
	*link = c->hnext;
	if(c->prev) c->prev->next = c->next; else in.head = c->next;
	if(c->next) c->next->prev = c->prev; else in.tail = c->prev;
	if(c->conn == NULL) disconnected_unlink(c);
	in.count--;
	free_client(c);
}

static struct in_client *create(const char *clientid)
{
	struct in_client *c;
	size_t slot;

	if(in.count >= in.bucket_count * 2 && !grow() && in.buckets == NULL){
		return NULL;
	}
	c = calloc(1, sizeof(*c));
	if(c == NULL) return NULL;
	c->clientid = strdup(clientid);
	if(c->clientid == NULL){
		free(c);
		return NULL;
	}
	c->last_disconnect = -1;
	slot = hash_id(clientid) & (in.bucket_count - 1);
	c->hnext = in.buckets[slot];
	in.buckets[slot] = c;
	c->prev = in.tail;
	if(in.tail) in.tail->next = c; else in.head = c;
	in.tail = c;
	in.count++;
	return c;
}

static bool replace_string(char **field, const char *value)
{
	char *copy = NULL;

	if(value){
		copy = strdup(value);
		if(copy == NULL) return false;
	}
	free(*field);
	*field = copy;
	return true;
}

static const char *protocol_name(int protocol)
{
	switch(protocol){
		case mp_websockets: return "WebSockets";
		case mp_mqttsn: return "MQTT-SN";
		default: return "MQTT";
	}
}

static const char *protocol_version_name(int version)
{
	switch(version){
		case 3: return "v3.1";
		case 4: return "v3.1.1";
		case 5: return "v5";
		default: return "unknown";
	}
}

/* ------------------------------------------------------------------- events */

static void publish_event(const struct in_client *c, const char *event, long long timestamp)
{
	cJSON *tree = cJSON_CreateObject();

	if(tree == NULL) return;
	if(cJSON_AddStringToObject(tree, "event", event) == NULL
			|| cJSON_AddStringToObject(tree, "clientid", c->clientid) == NULL
			|| (c->username ? cJSON_AddStringToObject(tree, "username", c->username)
				: cJSON_AddNullToObject(tree, "username")) == NULL
			|| (c->address ? cJSON_AddStringToObject(tree, "address", c->address)
				: cJSON_AddNullToObject(tree, "address")) == NULL
			|| cJSON_AddStringToObject(tree, "protocol", protocol_name(c->protocol)) == NULL
			|| cJSON_AddStringToObject(tree, "protocolVersion", protocol_version_name(c->protocol_version)) == NULL
			|| cJSON_AddNumberToObject(tree, "timestamp", (double)timestamp) == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, MMC_PLUGIN_NAME ": out of memory building an inspect event");
		cJSON_Delete(tree);
		return;
	}
	mmc_publish_json(INSPECT_EVENTS_TOPIC, tree);
	cJSON_Delete(tree);
}

/* A connection the broker accepted. */
static void connected(const struct mosquitto *conn, long long at)
{
	const char *clientid = mosquitto_client_id(conn);
	struct in_client *c;

	if(clientid == NULL) return;
	c = find(clientid);
	if(c && c->conn == conn){
		return; /* seen already (2.0 checks connected clients' passwords again on reload) */
	}
	if(c == NULL){
		c = create(clientid);
		if(c == NULL){
			mosquitto_log_printf(MOSQ_LOG_ERR, MMC_PLUGIN_NAME ": out of memory tracking client %s", clientid);
			return;
		}
	}else if(c->conn == NULL){
		disconnected_unlink(c);
	}
	if(!replace_string(&c->username, mosquitto_client_username(conn))
			|| !replace_string(&c->address, mosquitto_client_address(conn))){
		mosquitto_log_printf(MOSQ_LOG_ERR, MMC_PLUGIN_NAME ": out of memory tracking client %s", clientid);
	}
	c->conn = conn;
	c->protocol = mosquitto_client_protocol(conn);
	c->protocol_version = mosquitto_client_protocol_version(conn);
	c->keepalive = mosquitto_client_keepalive(conn);
	c->clean_session = mosquitto_client_clean_session(conn);
	c->last_connect = at;
	publish_event(c, "connected", at);
}

static void disconnected(const struct mosquitto *conn)
{
	const char *clientid = mosquitto_client_id(conn);
	struct in_client *c = clientid ? find(clientid) : NULL;

	if(c == NULL || c->conn != conn){
		return; /* not ours: a connection replaced by a newer one with its id, or never seen */
	}
	c->conn = NULL;
	c->last_disconnect = now_ms();
	c->dprev = in.dtail;
	c->dnext = NULL;
	if(in.dtail) in.dtail->dnext = c; else in.dhead = c;
	in.dtail = c;
	in.disconnected++;
	publish_event(c, "disconnected", c->last_disconnect);
	while(in.disconnected > in.max_disconnected){
		forget(in.dhead);
	}
}

#ifndef MMC_BROKER_2_1
/* The pending client was not refused: nothing else runs between a refusal and its
 * disconnect, so any later event means it got in. */
static void confirm_pending(void)
{
	const struct mosquitto *conn = in.pending;

	if(conn){
		in.pending = NULL;
		connected(conn, in.pending_at);
	}
}

static int basic_auth_callback(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;

	(void)event;
	(void)userdata;

	confirm_pending();
	/* On a reload 2.0 checks every session again, offline persistent ones included:
	 * none of them is connecting. */
	if(!in.reloading){
		in.pending = ed->client;
		in.pending_at = now_ms();
	}
	/* Never decide: the broker's other authentication does. */
	return MOSQ_ERR_PLUGIN_DEFER;
}

/* 2.0 calls it before checking every session's password again, in the same loop
 * iteration; the tick at the end of that iteration ends the reload. */
static int reload_callback(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;

	confirm_pending();
	in.reloading = true;
	/* Anything else stops 2.0 from telling the other plugins. */
	return MOSQ_ERR_PLUGIN_DEFER;
}

static int tick_callback(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;

	confirm_pending();
	in.reloading = false;
	return MOSQ_ERR_SUCCESS;
}
#define CONFIRM_PENDING() confirm_pending()
#else
static int connect_callback(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_connect *ed = event_data;

	(void)event;
	(void)userdata;

	connected(ed->client, now_ms());
	return MOSQ_ERR_SUCCESS;
}
#define CONFIRM_PENDING() ((void)0)

static int offline_callback(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_client_offline *ed = event_data;

	(void)event;
	(void)userdata;

	if(ed->client) disconnected(ed->client);
	return MOSQ_ERR_SUCCESS;
}
#endif

static int disconnect_callback(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;

	(void)event;
	(void)userdata;

	if(ed->client == NULL) return MOSQ_ERR_SUCCESS;
#ifndef MMC_BROKER_2_1
	if(in.pending == ed->client){
		in.pending = NULL;
		if(mosquitto_client_id(ed->client) == NULL){
			return MOSQ_ERR_SUCCESS; /* refused: it never was connected */
		}
		connected(ed->client, in.pending_at);
	}
#endif
	disconnected(ed->client);
	return MOSQ_ERR_SUCCESS;
}

/* ----------------------------------------------------------------- commands */

static bool add_string_or_null(cJSON *obj, const char *name, const char *value)
{
	return (value ? cJSON_AddStringToObject(obj, name, value) : cJSON_AddNullToObject(obj, name)) != NULL;
}

static cJSON *client_json(const struct in_client *c, bool verbose)
{
	cJSON *obj = cJSON_CreateObject();
	bool ok;

	if(obj == NULL) return NULL;
	ok = cJSON_AddStringToObject(obj, "clientid", c->clientid) != NULL
		&& add_string_or_null(obj, "username", c->username)
		&& cJSON_AddBoolToObject(obj, "connected", c->conn != NULL) != NULL;
	if(ok && verbose){
		ok = add_string_or_null(obj, "address", c->address)
			&& cJSON_AddStringToObject(obj, "protocol", protocol_name(c->protocol)) != NULL
			&& cJSON_AddStringToObject(obj, "protocolVersion", protocol_version_name(c->protocol_version)) != NULL
			&& cJSON_AddNumberToObject(obj, "lastConnect", (double)c->last_connect) != NULL
			&& (c->last_disconnect < 0 ? cJSON_AddNullToObject(obj, "lastDisconnect")
				: cJSON_AddNumberToObject(obj, "lastDisconnect", (double)c->last_disconnect)) != NULL
			&& cJSON_AddNumberToObject(obj, "keepalive", c->keepalive) != NULL
			&& cJSON_AddBoolToObject(obj, "cleanSession", c->clean_session) != NULL;
		/* Live figures exist only for a connected client. */
		if(ok && c->conn){
			ok = cJSON_AddNumberToObject(obj, "numSubscriptions",
					mosquitto_client_sub_count(c->conn)) != NULL;
		}
	}
	if(!ok){
		cJSON_Delete(obj);
		return NULL;
	}
	return obj;
}

/* An optional integer member: true and *value set (or left) if valid. */
static bool int_member(const cJSON *command, const char *name, long long *value)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(command, name);

	if(item == NULL || cJSON_IsNull(item)) return true;
	/* Within +-2^53 before the cast: a larger double does not fit a long long. */
	if(!cJSON_IsNumber(item) || !(item->valuedouble >= -9007199254740992.0 && item->valuedouble <= 9007199254740992.0)
			|| item->valuedouble != (double)(long long)item->valuedouble){
		return false;
	}
	*value = (long long)item->valuedouble;
	return true;
}

static void cmd_list(cJSON *responses, const cJSON *command, const char *name, const char *correlation)
{
	const cJSON *j_verbose = cJSON_GetObjectItemCaseSensitive(command, "verbose");
	long long count = -1, offset = 0, index = 0;
	bool verbose = false;
	cJSON *data, *clients, *entry;
	const struct in_client *c;

	if(j_verbose != NULL && !cJSON_IsNull(j_verbose)){
		if(!cJSON_IsBool(j_verbose)){
			mmc_add_error(responses, name, "Invalid verbose", correlation);
			return;
		}
		verbose = cJSON_IsTrue(j_verbose);
	}
	if(!int_member(command, "count", &count)){
		mmc_add_error(responses, name, "Invalid count", correlation);
		return;
	}
	if(!int_member(command, "offset", &offset) || offset < 0){
		mmc_add_error(responses, name, "Invalid offset", correlation);
		return;
	}
	data = cJSON_CreateObject();
	clients = data ? cJSON_AddArrayToObject(data, "clients") : NULL;
	if(clients == NULL || cJSON_AddNumberToObject(data, "totalCount", (double)in.count) == NULL){
		cJSON_Delete(data);
		mmc_add_error(responses, name, MMC_ERR_NOMEM, correlation);
		return;
	}
	for(c = in.head; c && (count < 0 || index < offset + count); c = c->next, index++){
		if(index < offset) continue;
		entry = client_json(c, verbose);
		if(entry == NULL){
			cJSON_Delete(data);
			mmc_add_error(responses, name, MMC_ERR_NOMEM, correlation);
			return;
		}
		cJSON_AddItemToArray(clients, entry);
	}
	mmc_add_data(responses, name, data, correlation);
}

static void cmd_get(cJSON *responses, const cJSON *command, const char *name, const char *correlation)
{
	const char *clientid = mmc_string_member(command, "clientid");
	const struct in_client *c;
	cJSON *client;

	if(clientid == NULL){
		mmc_add_error(responses, name, "Invalid/missing clientid", correlation);
		return;
	}
	c = find(clientid);
	if(c == NULL){
		mmc_add_error(responses, name, "Client not found", correlation);
		return;
	}
	client = client_json(c, true);
	if(client == NULL){
		mmc_add_error(responses, name, MMC_ERR_NOMEM, correlation);
		return;
	}
	/* Like Pro's getClient: the client's fields are the data. */
	mmc_add_data(responses, name, client, correlation);
}

static const struct mmc_command inspect_commands[] = {
	{"listClients", cmd_list},
	{"getClient", cmd_get},
	{NULL, NULL},
};

static int control_callback(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;

	(void)event;
	(void)userdata;

	CONFIRM_PENDING();
	mmc_handle_request(ed->payload, ed->payloadlen, INSPECT_RESPONSE_TOPIC, inspect_commands);
	return MOSQ_ERR_SUCCESS;
}

/* ------------------------------------------------------------ init, cleanup */

static bool parse_bool(const char *value, bool *out)
{
	if(!strcasecmp(value, "true") || !strcmp(value, "1")){
		*out = true;
	}else if(!strcasecmp(value, "false") || !strcmp(value, "0")){
		*out = false;
	}else{
		return false;
	}
	return true;
}

static int register_callbacks(mosquitto_plugin_id_t *identifier)
{
	int rc;

	rc = mosquitto_callback_register(identifier, MOSQ_EVT_CONTROL, control_callback, INSPECT_TOPIC, NULL);
	if(rc == MOSQ_ERR_ALREADY_EXISTS){
		mosquitto_log_printf(MOSQ_LOG_ERR, MMC_PLUGIN_NAME ": another plugin already handles " INSPECT_TOPIC
				" (plugin_opt_inspect false turns this part off)");
		return rc;
	}
	if(rc != MOSQ_ERR_SUCCESS) return rc;
#ifdef MMC_BROKER_2_1
	rc = mosquitto_callback_register(identifier, MOSQ_EVT_CONNECT, connect_callback, NULL, NULL);
	if(rc == MOSQ_ERR_SUCCESS){
		rc = mosquitto_callback_register(identifier, MOSQ_EVT_CLIENT_OFFLINE, offline_callback, NULL, NULL);
	}
#else
	rc = mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, basic_auth_callback, NULL, NULL);
	if(rc == MOSQ_ERR_SUCCESS){
		rc = mosquitto_callback_register(identifier, MOSQ_EVT_TICK, tick_callback, NULL, NULL);
	}
	if(rc == MOSQ_ERR_SUCCESS){
		rc = mosquitto_callback_register(identifier, MOSQ_EVT_RELOAD, reload_callback, NULL, NULL);
	}
#endif
	if(rc != MOSQ_ERR_SUCCESS) return rc;
	return mosquitto_callback_register(identifier, MOSQ_EVT_DISCONNECT, disconnect_callback, NULL, NULL);
}

int mmc_inspect_init(mosquitto_plugin_id_t *identifier, struct mosquitto_opt *options, int option_count)
{
	int i;

	memset(&in, 0, sizeof(in));
	/* Opt-in: on 2.0 it changes who may log in on a broker without authentication. */
	in.enabled = false;
	in.max_disconnected = MAX_DISCONNECTED_DEFAULT;
	for(i = 0; i < option_count; i++){
		if(!strcasecmp(options[i].key, "inspect")){
			if(!parse_bool(options[i].value, &in.enabled)){
				mosquitto_log_printf(MOSQ_LOG_ERR, MMC_PLUGIN_NAME ": invalid inspect '%s' (true or false)",
						options[i].value);
				return MOSQ_ERR_INVAL;
			}
		}else if(!strcasecmp(options[i].key, "max_disconnected_clients")){
			char *end = NULL;
			unsigned long long value;

			errno = 0;
			value = strtoull(options[i].value, &end, 10);
			if(errno || end == options[i].value || *end != '\0' || options[i].value[0] == '-'){
				mosquitto_log_printf(MOSQ_LOG_ERR, MMC_PLUGIN_NAME ": invalid max_disconnected_clients '%s'",
						options[i].value);
				return MOSQ_ERR_INVAL;
			}
			in.max_disconnected = (size_t)value;
		}
	}
	if(!in.enabled){
		return MOSQ_ERR_SUCCESS;
	}
	if(!grow()) return MOSQ_ERR_NOMEM;
	mosquitto_log_printf(MOSQ_LOG_NOTICE, MMC_PLUGIN_NAME ": handling " INSPECT_TOPIC
			", events on " INSPECT_EVENTS_TOPIC);
#ifndef MMC_BROKER_2_1
	/* What 2.0's basic-auth event implies (plugin/README.md). */
	mosquitto_log_printf(MOSQ_LOG_NOTICE, MMC_PLUGIN_NAME ": inspect sees clients through basic "
			"authentication: load this plugin before any other authentication plugin. Without any "
			"authentication (no password_file, no auth plugin), clients that send a username are "
			"refused while plugin_opt_inspect is true");
#endif
	return register_callbacks(identifier);
}

void mmc_inspect_cleanup(mosquitto_plugin_id_t *identifier)
{
	struct in_client *c, *next;

	if(!in.enabled) return;
	mosquitto_callback_unregister(identifier, MOSQ_EVT_CONTROL, control_callback, INSPECT_TOPIC);
#ifdef MMC_BROKER_2_1
	mosquitto_callback_unregister(identifier, MOSQ_EVT_CONNECT, connect_callback, NULL);
	mosquitto_callback_unregister(identifier, MOSQ_EVT_CLIENT_OFFLINE, offline_callback, NULL);
#else
	mosquitto_callback_unregister(identifier, MOSQ_EVT_BASIC_AUTH, basic_auth_callback, NULL);
	mosquitto_callback_unregister(identifier, MOSQ_EVT_TICK, tick_callback, NULL);
	mosquitto_callback_unregister(identifier, MOSQ_EVT_RELOAD, reload_callback, NULL);
#endif
	mosquitto_callback_unregister(identifier, MOSQ_EVT_DISCONNECT, disconnect_callback, NULL);
	for(c = in.head; c; c = next){
		next = c->next;
		free_client(c);
	}
	free(in.buckets);
	memset(&in, 0, sizeof(in));
}
