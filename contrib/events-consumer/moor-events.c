/*
 * moor-events: print the lifecycle events that moord publishes, one per line.
 *
 * A consumer of moord's events PUB socket written with libzmq and msgpack-c
 * only, to show that the protocol needs nothing from Python.  Each message
 * has two frames: the topic (UTF-8 bytes, for prefix subscriptions) and a
 * msgpack map with the keys v, topic, id, ts and payload (docs/plugins.md
 * describes them).
 *
 * Build: cc -o moor-events moor-events.c $(pkg-config --cflags --libs libzmq msgpack)
 * Usage: moor-events [-s STATE] [-n COUNT] [TOPIC-PREFIX...]
 */

#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define SUPPORTED_VERSION 1
#define MAX_FRAME (16 * 1024 * 1024)

static const msgpack_object *map_get(const msgpack_object *map, const char *key)
{
    size_t length = strlen(key);

    if (map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == length &&
            memcmp(k->via.str.ptr, key, length) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static void print_str(const msgpack_object *value)
{
    if (value != NULL && value->type == MSGPACK_OBJECT_STR)
        fwrite(value->via.str.ptr, 1, value->via.str.size, stdout);
    else
        fputs("-", stdout);
}

/* Print one envelope as "TS TOPIC ID PAYLOAD"; return -1 for a version this program does not know. */
static int print_event(const char *data, size_t size)
{
    msgpack_unpacked message;
    size_t offset = 0;
    int result = 0;

    msgpack_unpacked_init(&message);
    if (msgpack_unpack_next(&message, data, size, &offset) != MSGPACK_UNPACK_SUCCESS) {
        fprintf(stderr, "moor-events: malformed event of %zu bytes skipped\n", size);
        msgpack_unpacked_destroy(&message);
        return 0;
    }
    const msgpack_object *envelope = &message.data;
    const msgpack_object *version = map_get(envelope, "v");
    if (version == NULL || version->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        version->via.u64 > SUPPORTED_VERSION) {
        fprintf(stderr, "moor-events: event protocol version not supported (this program reads 1)\n");
        result = -1;
    } else {
        const msgpack_object *ts = map_get(envelope, "ts");
        const msgpack_object *payload = map_get(envelope, "payload");
        printf("%.6f ", ts != NULL && ts->type == MSGPACK_OBJECT_FLOAT64 ? ts->via.f64 : 0.0);
        print_str(map_get(envelope, "topic"));
        putchar(' ');
        print_str(map_get(envelope, "id"));
        putchar(' ');
        if (payload != NULL)
            msgpack_object_print(stdout, *payload);
        putchar('\n');
        fflush(stdout);
    }
    msgpack_unpacked_destroy(&message);
    return result;
}

int main(int argc, char **argv)
{
    const char *state = getenv("MOORAGE_STATE") ? getenv("MOORAGE_STATE") : "/run/moorage";
    long count = -1;
    int option;

    while ((option = getopt(argc, argv, "s:n:h")) != -1) {
        if (option == 's') {
            state = optarg;
        } else if (option == 'n') {
            count = strtol(optarg, NULL, 10);
        } else {
            fprintf(stderr, "usage: moor-events [-s STATE] [-n COUNT] [TOPIC-PREFIX...]\n");
            return 2;
        }
    }

    char endpoint[4096];
    snprintf(endpoint, sizeof endpoint, "ipc://%s/events.sock", state);
    void *context = zmq_ctx_new();
    void *socket = zmq_socket(context, ZMQ_SUB);
    int64_t max_size = MAX_FRAME;
    zmq_setsockopt(socket, ZMQ_MAXMSGSIZE, &max_size, sizeof max_size);
    if (zmq_connect(socket, endpoint) != 0) {
        fprintf(stderr, "moor-events: cannot connect to %s: %s\n", endpoint, zmq_strerror(zmq_errno()));
        return 1;
    }
    if (optind == argc)
        zmq_setsockopt(socket, ZMQ_SUBSCRIBE, "", 0);
    for (int i = optind; i < argc; i++)
        zmq_setsockopt(socket, ZMQ_SUBSCRIBE, argv[i], strlen(argv[i]));

    int status = 0;
    while (count != 0) {
        zmq_msg_t topic, body;
        zmq_msg_init(&topic);
        zmq_msg_init(&body);
        if (zmq_msg_recv(&topic, socket, 0) < 0 || !zmq_msg_more(&topic) || zmq_msg_recv(&body, socket, 0) < 0) {
            fprintf(stderr, "moor-events: receive failed: %s\n", zmq_strerror(zmq_errno()));
            status = 1;
            break;
        }
        if (print_event(zmq_msg_data(&body), zmq_msg_size(&body)) == 0 && count > 0)
            count--;
        zmq_msg_close(&topic);
        zmq_msg_close(&body);
    }
    zmq_close(socket);
    zmq_ctx_term(context);
    return status;
}
