/*
 * mmc_client_control: the Cedalo client-control API on open-source mosquitto.
 *
 * Registers $CONTROL/cedalo/client-control/v1 and answers on .../response with
 * the envelope of the dynamic-security plugin:
 *
 *   {"commands":[{"command":"disconnectClient","clientid":"c1","correlationData":"x"}]}
 *   {"responses":[{"command":"disconnectClient","data":{},"correlationData":"x"}]}
 *
 * Commands: disconnectClient, subscribeClient, unsubscribeClient, and
 * listIncomingBridges (mmc's own: see below).
 * Who may call them is decided by the broker's ACLs: write access to the topic.
 *
 * It also tracks who connects and answers the Cedalo inspect API on
 * $CONTROL/cedalo/inspect/v1 (mmc_inspect.c).
 *
 * Subscriptions made for a client:
 *   - mosquitto 2.1 and later (detected at build time): real broker subscriptions
 *     through mosquitto_subscription_add/delete; the broker does the rest.
 *   - mosquitto 2.0: the plugin keeps them itself, in a topic tree
 *     (mmc_subtree.c), and for every message a client publishes (MOSQ_EVT_MESSAGE)
 *     that matches one, delivers a copy to that client with
 *     mosquitto_broker_publish_copy(clientid, ...).
 *     They end when the client disconnects (MOSQ_EVT_DISCONNECT).
 *     See plugin/README.md for what 2.0 can and cannot do (send_retain, retain
 *     flag, read ACLs, MQTT v5 properties, persistent sessions).
 *
 * Incoming bridges: a bridge publishes its state notification into the far
 * broker's $SYS/broker/connection/<id>/state over its client connection, while
 * a broker publishes its own bridges' states internally (no client, so no
 * MOSQ_EVT_MESSAGE). The plugin records which client published each such
 * topic; listIncomingBridges tells mmc which bridge states are not the broker's.
 *
 * Plugin options (mosquitto.conf):
 *   plugin_opt_max_subscriptions N   at most N plugin-kept subscriptions (2.0
 *                                    only; default 10000, 0 = no limit)
 *   plugin_opt_inspect true          track clients, serve the inspect API (default
 *                                    false: on 2.0 it changes who may log in on a
 *                                    broker without authentication)
 *   plugin_opt_max_disconnected_clients N
 *                                    remember at most N disconnected clients
 *                                    (default 1000; 0 = forget them at once)
 *
 * SPDX-License-Identifier: Apache-2.0
 */

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mmc_plugin.h"

#ifdef MMC_BROKER_2_1
#define MMC_CC_SUBSCRIPTION_API 1
#endif

#define MMC_CC_NAME MMC_PLUGIN_NAME
#define MMC_CC_VERSION "1.1.0"
#define MMC_CC_TOPIC "$CONTROL/cedalo/client-control/v1"
#define MMC_CC_RESPONSE_TOPIC MMC_CC_TOPIC "/response"
#define MMC_CC_MAX_SUBS_DEFAULT 10000
#define MMC_CC_STATE_FILTER "$SYS/broker/connection/+/state"
#define MMC_CC_STATE_PREFIX "$SYS/broker/connection/"
/* Any client may publish to the state topics (mosquitto lets them through its
 * $SYS write check): a bound keeps a flood of made-up topics from growing memory. */
#define MMC_CC_MAX_NOTES 1000

#define ERR_NOMEM MMC_ERR_NOMEM

enum send_retain {
	SEND_RETAIN_ALWAYS = 0,
	SEND_RETAIN_NEW = 1,
	SEND_RETAIN_NEVER = 2,
};


/* A $SYS bridge state topic that a client published: someone else's bridge. */
struct cc_note {
	struct cc_note *next;
	char *id;        /* <id> of $SYS/broker/connection/<id>/state */
	char *clientid;  /* the client that last published it */
};

struct cc_state {
	mosquitto_plugin_id_t *identifier;
	struct cc_note *notes;
	size_t note_count;
	/* A note was dropped at MMC_CC_MAX_NOTES: the list is no longer the whole truth. */
	bool notes_incomplete;
#ifndef MMC_CC_SUBSCRIPTION_API
	size_t max_subs;  /* the subscriptions are in mmc_subtree.c */
#endif
};

/* The broker calls a plugin from its single main thread: one state is enough. */
static struct cc_state state;

/* ------------------------------------------------------------------ helpers */

void mmc_add_error(cJSON *responses, const char *command, const char *error, const char *correlation)
{
	cJSON *entry = cJSON_CreateObject();

	if(entry == NULL){
		return;
	}
	if(cJSON_AddStringToObject(entry, "command", command) == NULL
			|| cJSON_AddStringToObject(entry, "error", error) == NULL
			|| (correlation && cJSON_AddStringToObject(entry, "correlationData", correlation) == NULL)){
		cJSON_Delete(entry);
		return;
	}
	cJSON_AddItemToArray(responses, entry);
}

void mmc_add_data(cJSON *responses, const char *command, cJSON *data, const char *correlation)
{
	cJSON *entry = cJSON_CreateObject();

	if(data == NULL){
		data = cJSON_CreateObject();
	}
	if(entry == NULL || data == NULL){
		cJSON_Delete(entry);
		cJSON_Delete(data);
		return;
	}
	if(cJSON_AddStringToObject(entry, "command", command) == NULL
			|| !cJSON_AddItemToObject(entry, "data", data)){
		cJSON_Delete(entry);
		cJSON_Delete(data);
		return;
	}
	if(correlation && cJSON_AddStringToObject(entry, "correlationData", correlation) == NULL){
		cJSON_Delete(entry);
		return;
	}
	cJSON_AddItemToArray(responses, entry);
}

static void add_success(cJSON *responses, const char *command, const char *correlation)
{
	mmc_add_data(responses, command, NULL, correlation);
}

#define add_error mmc_add_error
#define string_member mmc_string_member

void mmc_publish_json(const char *topic, const cJSON *tree)
{
	char *json = cJSON_PrintUnformatted(tree);
	size_t len;

	if(json == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, MMC_CC_NAME ": out of memory building a message for %s", topic);
		return;
	}
	len = strlen(json);
	if(mosquitto_broker_publish_copy(NULL, topic, (int)len, json, 0, false, NULL) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_ERR, MMC_CC_NAME ": could not publish on %s", topic);
	}
	cJSON_free(json);
}

const char *mmc_string_member(const cJSON *command, const char *name)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(command, name);

	if(!cJSON_IsString(item) || item->valuestring == NULL || item->valuestring[0] == '\0'){
		return NULL;
	}
	if(mosquitto_validate_utf8(item->valuestring, (int)strlen(item->valuestring)) != MOSQ_ERR_SUCCESS){
		return NULL;
	}
	return item->valuestring;
}

static const char *valid_filter(const cJSON *command)
{
	const char *topic = string_member(command, "topic");

	if(topic == NULL || strlen(topic) > 65535 || mosquitto_sub_topic_check(topic) != MOSQ_ERR_SUCCESS){
		return NULL;
	}
	return topic;
}

/* Parse subscribeClient's qos and options; NULL on success, else the error. */
static const char *parse_subscription(const cJSON *command, uint8_t *qos, bool *no_local,
		bool *retain_as_published, enum send_retain *send_retain)
{
	const cJSON *j_qos = cJSON_GetObjectItemCaseSensitive(command, "qos");
	const cJSON *options = cJSON_GetObjectItemCaseSensitive(command, "options");
	const cJSON *item;

	*qos = 0;
	*no_local = false;
	*retain_as_published = false;
	*send_retain = SEND_RETAIN_ALWAYS;

	if(j_qos != NULL){
		if(!cJSON_IsNumber(j_qos)
				|| (j_qos->valuedouble != 0.0 && j_qos->valuedouble != 1.0 && j_qos->valuedouble != 2.0)){
			return "Invalid qos";
		}
		*qos = (uint8_t)j_qos->valueint;
	}
	if(options == NULL || cJSON_IsNull(options)){
		return NULL;
	}
	if(!cJSON_IsObject(options)){
		return "Invalid options";
	}
	item = cJSON_GetObjectItemCaseSensitive(options, "no_local");
	if(item != NULL && !cJSON_IsNull(item)){
		if(!cJSON_IsBool(item)) return "Invalid options: no_local must be a boolean";
		*no_local = cJSON_IsTrue(item);
	}
	item = cJSON_GetObjectItemCaseSensitive(options, "retain_as_published");
	if(item != NULL && !cJSON_IsNull(item)){
		if(!cJSON_IsBool(item)) return "Invalid options: retain_as_published must be a boolean";
		*retain_as_published = cJSON_IsTrue(item);
	}
	item = cJSON_GetObjectItemCaseSensitive(options, "send_retain");
	if(item != NULL && !cJSON_IsNull(item)){
		if(!cJSON_IsString(item)) return "Invalid options: send_retain must be a string";
		if(!strcmp(item->valuestring, "always") || !strcmp(item->valuestring, "null")){
			*send_retain = SEND_RETAIN_ALWAYS;
		}else if(!strcmp(item->valuestring, "new")){
			*send_retain = SEND_RETAIN_NEW;
		}else if(!strcmp(item->valuestring, "never")){
			*send_retain = SEND_RETAIN_NEVER;
		}else{
			return "Invalid options: send_retain must be one of always, new, never";
		}
	}
	return NULL;
}

/* ------------------------------------------------- plugin-kept subscriptions */

#ifndef MMC_CC_SUBSCRIPTION_API

static void deliver_copy(const char *clientid, int qos, void *arg)
{
	const struct mosquitto_evt_message *ed = arg;

	if(ed->qos < qos) qos = ed->qos;
	/* The broker sends a copy addressed to one client with retain 0 (2.0 cannot
	 * set it), so retain_as_published cannot be honoured for retained messages. */
	if(mosquitto_broker_publish_copy(clientid, ed->topic, (int)ed->payloadlen,
				ed->payload, qos, false, NULL) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_WARNING, MMC_CC_NAME ": could not deliver a message on %s to %s",
				ed->topic, clientid);
	}
}

/* One copy per subscribed client, at the best matching qos (mmc_subtree.c matches). */
static void copy_to_subscribers(const struct mosquitto_evt_message *ed, const char *sender)
{
	mmc_subs_match(ed->topic, sender, deliver_copy, (void *)ed);
}

static int disconnect_callback(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	const char *clientid;

	(void)event;
	(void)userdata;

	clientid = ed->client ? mosquitto_client_id(ed->client) : NULL;
	if(clientid){
		mmc_subs_remove_client(clientid);
	}
	return MOSQ_ERR_SUCCESS;
}

#endif /* !MMC_CC_SUBSCRIPTION_API */

/* ------------------------------------------------------- incoming bridges */

static void free_notes(void)
{
	struct cc_note *note, *next;

	for(note = state.notes; note; note = next){
		next = note->next;
		free(note->id);
		free(note->clientid);
		free(note);
	}
	state.notes = NULL;
	state.note_count = 0;
}

/* Remember that `clientid` published the state topic `topic` (MMC_CC_STATE_FILTER). */
static void record_note(const char *topic, const char *clientid)
{
	size_t prefix = strlen(MMC_CC_STATE_PREFIX);
	size_t id_len = strlen(topic) - prefix - strlen("/state");
	struct cc_note *note;
	char *copy;

	for(note = state.notes; note; note = note->next){
		if(strlen(note->id) == id_len && !strncmp(note->id, topic + prefix, id_len)){
			if(strcmp(note->clientid, clientid)){
				copy = strdup(clientid);
				if(copy == NULL){
					state.notes_incomplete = true;
					return;
				}
				free(note->clientid);
				note->clientid = copy;
			}
			return;
		}
	}
	if(state.note_count >= MMC_CC_MAX_NOTES){
		state.notes_incomplete = true;
		return;
	}
	note = calloc(1, sizeof(*note));
	if(note){
		note->id = strndup(topic + prefix, id_len);
		note->clientid = strdup(clientid);
	}
	if(note == NULL || note->id == NULL || note->clientid == NULL){
		if(note){
			free(note->id);
			free(note->clientid);
			free(note);
		}
		state.notes_incomplete = true;
		return;
	}
	note->next = state.notes;
	state.notes = note;
	state.note_count++;
}

/* Every message a client publishes (never the broker's own, never a plugin's). */
static int message_callback(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	const char *sender;
	bool matches = false;

	(void)event;
	(void)userdata;

	if(ed->topic == NULL){
		return MOSQ_ERR_SUCCESS;
	}
	sender = ed->client ? mosquitto_client_id(ed->client) : NULL;
	if(sender && !strncmp(ed->topic, MMC_CC_STATE_PREFIX, strlen(MMC_CC_STATE_PREFIX))
			&& mosquitto_topic_matches_sub(MMC_CC_STATE_FILTER, ed->topic, &matches) == MOSQ_ERR_SUCCESS
			&& matches){
		record_note(ed->topic, sender);
	}
#ifndef MMC_CC_SUBSCRIPTION_API
	copy_to_subscribers(ed, sender);
#endif
	/* Never change or refuse the message itself. */
	return MOSQ_ERR_SUCCESS;
}

/* ----------------------------------------------------------------- commands */

static void cmd_disconnect(cJSON *responses, const cJSON *command, const char *name, const char *correlation)
{
	const char *clientid = string_member(command, "clientid");
	int rc;

	if(clientid == NULL){
		add_error(responses, name, "Invalid/missing clientid", correlation);
		return;
	}
	/* with_will=true: a connection the server closes publishes its will (MQTT 3.1.2.5),
	 * and on 2.0 it is the only safe choice for an offline persistent session, which
	 * kick with with_will=false would put on the session-expiry list a second time. */
	rc = mosquitto_kick_client_by_clientid(clientid, true);
	if(rc == MOSQ_ERR_NOT_FOUND){
		add_error(responses, name, "Client not found", correlation);
	}else if(rc != MOSQ_ERR_SUCCESS){
		add_error(responses, name, "Internal error: could not disconnect the client", correlation);
	}else{
		mosquitto_log_printf(MOSQ_LOG_NOTICE, MMC_CC_NAME ": disconnected client %s", clientid);
		add_success(responses, name, correlation);
	}
}

static void cmd_subscribe(cJSON *responses, const cJSON *command, const char *name, const char *correlation)
{
	const char *clientid = string_member(command, "clientid");
	const char *topic = valid_filter(command);
	const char *error;
	uint8_t qos;
	bool no_local, retain_as_published;
	enum send_retain send_retain;

	if(clientid == NULL){
		add_error(responses, name, "Invalid/missing clientid", correlation);
		return;
	}
	if(topic == NULL){
		add_error(responses, name, "Invalid/missing topic", correlation);
		return;
	}
	error = parse_subscription(command, &qos, &no_local, &retain_as_published, &send_retain);
	if(error){
		add_error(responses, name, error, correlation);
		return;
	}
#ifdef MMC_CC_SUBSCRIPTION_API
	{
		struct mosquitto_subscription sub;
		int rc;

		memset(&sub, 0, sizeof(sub));
		sub.clientid = (char *)clientid;
		sub.topic_filter = (char *)topic;
		sub.options = qos;
		if(no_local) sub.options |= MQTT_SUB_OPT_NO_LOCAL;
		if(retain_as_published) sub.options |= MQTT_SUB_OPT_RETAIN_AS_PUBLISHED;
		if(send_retain == SEND_RETAIN_NEW) sub.options |= MQTT_SUB_OPT_SEND_RETAIN_NEW;
		if(send_retain == SEND_RETAIN_NEVER) sub.options |= MQTT_SUB_OPT_SEND_RETAIN_NEVER;
		rc = mosquitto_subscription_add(&sub);
		/* Subscribing again to the same filter: the broker has replaced its options. */
		if(rc == MOSQ_ERR_SUB_EXISTS){
			rc = MOSQ_ERR_SUCCESS;
		}
		if(rc == MOSQ_ERR_NOT_FOUND){
			error = "Client not found";
		}else if(rc == MOSQ_ERR_NOMEM){
			error = ERR_NOMEM;
		}else if(rc != MOSQ_ERR_SUCCESS){
			error = "Subscription refused";
		}
	}
#else
	if(!strncmp(topic, "$share/", 7)){
		error = "Shared subscriptions are not supported on mosquitto 2.0";
	}else{
		struct mmc_sub_options options = {qos, no_local, retain_as_published, (int)send_retain};

		error = mmc_subs_add(clientid, topic, &options);
	}
#endif
	if(error){
		add_error(responses, name, error, correlation);
	}else{
		mosquitto_log_printf(MOSQ_LOG_INFO, MMC_CC_NAME ": subscribed client %s to %s (qos %d)",
				clientid, topic, qos);
		add_success(responses, name, correlation);
	}
}

static void cmd_unsubscribe(cJSON *responses, const cJSON *command, const char *name, const char *correlation)
{
	const char *clientid = string_member(command, "clientid");
	const char *topic = valid_filter(command);

	if(clientid == NULL){
		add_error(responses, name, "Invalid/missing clientid", correlation);
		return;
	}
	if(topic == NULL){
		add_error(responses, name, "Invalid/missing topic", correlation);
		return;
	}
#ifdef MMC_CC_SUBSCRIPTION_API
	{
		int rc = mosquitto_subscription_delete(clientid, topic);

		if(rc == MOSQ_ERR_NOT_FOUND){
			add_error(responses, name, "Client not found", correlation);
			return;
		}else if(rc != MOSQ_ERR_SUCCESS){
			add_error(responses, name, "Internal error: could not unsubscribe", correlation);
			return;
		}
	}
#else
	/* Like an MQTT UNSUBSCRIBE: no such subscription is not an error. */
	mmc_subs_remove(clientid, topic);
#endif
	mosquitto_log_printf(MOSQ_LOG_INFO, MMC_CC_NAME ": unsubscribed client %s from %s", clientid, topic);
	add_success(responses, name, correlation);
}

/* {"bridges":[{"id","clientid"}],"complete":bool}: the bridge states clients published. */
static void cmd_list_incoming(cJSON *responses, const char *name, const char *correlation)
{
	cJSON *entry, *data, *list, *item;
	struct cc_note *note;

	entry = cJSON_CreateObject();
	if(entry == NULL){
		add_error(responses, name, ERR_NOMEM, correlation);
		return;
	}
	if(cJSON_AddStringToObject(entry, "command", name) == NULL
			|| (data = cJSON_AddObjectToObject(entry, "data")) == NULL
			|| (list = cJSON_AddArrayToObject(data, "bridges")) == NULL
			|| cJSON_AddBoolToObject(data, "complete", !state.notes_incomplete) == NULL
			|| (correlation && cJSON_AddStringToObject(entry, "correlationData", correlation) == NULL)){
		cJSON_Delete(entry);
		add_error(responses, name, ERR_NOMEM, correlation);
		return;
	}
	for(note = state.notes; note; note = note->next){
		item = cJSON_CreateObject();
		if(item == NULL
				|| cJSON_AddStringToObject(item, "id", note->id) == NULL
				|| cJSON_AddStringToObject(item, "clientid", note->clientid) == NULL){
			cJSON_Delete(item);
			cJSON_Delete(entry);
			add_error(responses, name, ERR_NOMEM, correlation);
			return;
		}
		cJSON_AddItemToArray(list, item);
	}
	cJSON_AddItemToArray(responses, entry);
}

/* The envelope: {"commands":[...]} in, {"responses":[...]} out, errors as dynamic-security words them. */
void mmc_handle_request(const void *payload, uint32_t payloadlen, const char *response_topic,
		const struct mmc_command *commands)
{
	cJSON *tree, *responses, *request, *command;
	const cJSON *j_name, *j_correlation;
	const struct mmc_command *known;
	const char *correlation;

	tree = cJSON_CreateObject();
	if(tree == NULL) return;
	responses = cJSON_AddArrayToObject(tree, "responses");
	if(responses == NULL){
		cJSON_Delete(tree);
		return;
	}

	request = payload ? cJSON_ParseWithLength(payload, payloadlen) : NULL;
	if(request == NULL){
		add_error(responses, "Unknown command", "Payload not valid JSON", NULL);
		mmc_publish_json(response_topic, tree);
		cJSON_Delete(tree);
		return;
	}
	command = cJSON_GetObjectItemCaseSensitive(request, "commands");
	if(!cJSON_IsObject(request) || !cJSON_IsArray(command)){
		add_error(responses, "Unknown command", "Invalid/missing commands", NULL);
	}else{
		cJSON_ArrayForEach(command, cJSON_GetObjectItemCaseSensitive(request, "commands")){
			if(!cJSON_IsObject(command)){
				add_error(responses, "Unknown command", "Command not an object", NULL);
				continue;
			}
			j_correlation = cJSON_GetObjectItemCaseSensitive(command, "correlationData");
			correlation = NULL;
			if(j_correlation != NULL){
				if(!cJSON_IsString(j_correlation)){
					add_error(responses, "Unknown command", "Invalid correlationData data type.", NULL);
					break;
				}
				correlation = j_correlation->valuestring;
			}
			j_name = cJSON_GetObjectItemCaseSensitive(command, "command");
			if(!cJSON_IsString(j_name) || j_name->valuestring == NULL){
				add_error(responses, "Unknown command", "Missing command", correlation);
				continue;
			}
			for(known = commands; known->name; known++){
				if(!strcasecmp(j_name->valuestring, known->name)){
					break;
				}
			}
			if(known->name){
				known->run(responses, command, known->name, correlation);
			}else{
				add_error(responses, j_name->valuestring, "Unknown command", correlation);
			}
		}
	}
	cJSON_Delete(request);
	mmc_publish_json(response_topic, tree);
	cJSON_Delete(tree);
}

static void cmd_list_incoming_bridges(cJSON *responses, const cJSON *command, const char *name,
		const char *correlation)
{
	(void)command;
	cmd_list_incoming(responses, name, correlation);
}

static const struct mmc_command client_control_commands[] = {
	{"disconnectClient", cmd_disconnect},
	{"subscribeClient", cmd_subscribe},
	{"unsubscribeClient", cmd_unsubscribe},
	{"listIncomingBridges", cmd_list_incoming_bridges},
	{NULL, NULL},
};

static int control_callback(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;

	(void)event;
	(void)userdata;

	mmc_handle_request(ed->payload, ed->payloadlen, MMC_CC_RESPONSE_TOPIC, client_control_commands);
	return MOSQ_ERR_SUCCESS;
}

/* ------------------------------------------------------------ plugin entry */

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;

	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5){
			return 5;
		}
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	int i, rc;

	memset(&state, 0, sizeof(state));
	state.identifier = identifier;
	*userdata = &state;

#ifndef MMC_CC_SUBSCRIPTION_API
	state.max_subs = MMC_CC_MAX_SUBS_DEFAULT;
#endif
	for(i = 0; i < option_count; i++){
		if(!strcasecmp(options[i].key, "max_subscriptions")){
#ifndef MMC_CC_SUBSCRIPTION_API
			char *end = NULL;
			unsigned long long value;

			errno = 0;
			value = strtoull(options[i].value, &end, 10);
			if(errno || end == options[i].value || *end != '\0' || options[i].value[0] == '-'){
				mosquitto_log_printf(MOSQ_LOG_ERR, MMC_CC_NAME ": invalid max_subscriptions '%s'",
						options[i].value);
				return MOSQ_ERR_INVAL;
			}
			state.max_subs = (size_t)value;
#endif
		}
	}

#ifdef MMC_CC_SUBSCRIPTION_API
	mosquitto_plugin_set_info(identifier, MMC_CC_NAME, MMC_CC_VERSION);
#else
	mmc_subs_init(state.max_subs);
#endif
	rc = mosquitto_callback_register(identifier, MOSQ_EVT_CONTROL, control_callback, MMC_CC_TOPIC, NULL);
	if(rc == MOSQ_ERR_ALREADY_EXISTS){
		mosquitto_log_printf(MOSQ_LOG_ERR, MMC_CC_NAME ": another plugin already handles " MMC_CC_TOPIC);
		return rc;
	}else if(rc != MOSQ_ERR_SUCCESS){
		return rc;
	}
	rc = mosquitto_callback_register(identifier, MOSQ_EVT_MESSAGE, message_callback, NULL, NULL);
	if(rc != MOSQ_ERR_SUCCESS) return rc;
#ifndef MMC_CC_SUBSCRIPTION_API
	rc = mosquitto_callback_register(identifier, MOSQ_EVT_DISCONNECT, disconnect_callback, NULL, NULL);
	if(rc != MOSQ_ERR_SUCCESS) return rc;
#endif
	rc = mmc_inspect_init(identifier, options, option_count);
	if(rc != MOSQ_ERR_SUCCESS) return rc;
	mosquitto_log_printf(MOSQ_LOG_NOTICE, MMC_CC_NAME " " MMC_CC_VERSION ": handling " MMC_CC_TOPIC
#ifdef MMC_CC_SUBSCRIPTION_API
			" (broker subscriptions)"
#else
			" (plugin-kept subscriptions)"
#endif
			);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;

	if(state.identifier){
		mosquitto_callback_unregister(state.identifier, MOSQ_EVT_CONTROL, control_callback, MMC_CC_TOPIC);
		mmc_inspect_cleanup(state.identifier);
		mosquitto_callback_unregister(state.identifier, MOSQ_EVT_MESSAGE, message_callback, NULL);
#ifndef MMC_CC_SUBSCRIPTION_API
		mosquitto_callback_unregister(state.identifier, MOSQ_EVT_DISCONNECT, disconnect_callback, NULL);
#endif
	}
#ifndef MMC_CC_SUBSCRIPTION_API
	mmc_subs_free();
#endif
	free_notes();
	memset(&state, 0, sizeof(state));
	return MOSQ_ERR_SUCCESS;
}
