/*
 * allowall: a fanotify permission responder that allows everything, the
 * floor of any measurement by permission events.
 *
 *     allowall PATH...
 *
 * Marks the mount of each PATH for the events the measurement agent asks
 * for (FAN_OPEN_EXEC_PERM and FAN_OPEN_PERM), says "ready" on stdout, then
 * answers FAN_ALLOW to every event, one read at a time, until it is killed.
 * What an exec costs under it is what the kernel's two permission round
 * trips cost, with nothing decided; the agent's figures are read against it.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/fanotify.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: allowall PATH...\n");
        return 2;
    }
    int group = fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC,
                              O_RDONLY | O_LARGEFILE);
    if (group < 0) {
        perror("allowall: fanotify_init");
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        if (fanotify_mark(group, FAN_MARK_ADD | FAN_MARK_MOUNT,
                          FAN_OPEN_EXEC_PERM | FAN_OPEN_PERM, AT_FDCWD,
                          argv[i]) < 0) {
            perror(argv[i]);
            return 1;
        }
    }
    printf("ready\n");
    fflush(stdout);

    char buffer[8192];
    for (;;) {
        ssize_t length = read(group, buffer, sizeof buffer);
        if (length <= 0) {
            perror("allowall: read");
            return 1;
        }
        struct fanotify_event_metadata *event = (void *)buffer;
        for (; FAN_EVENT_OK(event, length); event = FAN_EVENT_NEXT(event, length)) {
            if (event->fd < 0)
                continue;  /* a queue overflow: nothing to answer */
            struct fanotify_response allow = {event->fd, FAN_ALLOW};
            if (write(group, &allow, sizeof allow) != sizeof allow) {
                perror("allowall: write");
                return 1;
            }
            close(event->fd);
        }
    }
}
